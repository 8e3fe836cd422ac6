//! Local image store: imports image archives (`docker save` output or an OCI image layout tar,
//! either possibly gzip-compressed) and hands out unpacked root filesystems, used read-only as
//! the overlayfs lower dir of containers, and pulls images from registries ([`registry`]),
//! stored the same way.
//!
//! Layout under the store root (e.g. /var/lib/berth/images):
//! ```text
//! images/<id>/image.json   metadata (id = hex sha256 of the config blob, docker's image id)
//! images/<id>/rootfs/      all layers applied, unpacked once per id
//! names.json               {"name:tag": "<id>"}: one id per name, so a name moves like a tag
//! tmp/                     imports in progress and removals; emptied by `ImageStore::open`
//! lock, names.lock         flock(2) files coordinating processes that share the store
//! ```
//! An import unpacks into `tmp/`, writes `image.json` (temp file + fsync + rename), syncs the
//! filesystem and renames the directory into `images/`: `list` never sees half an image. Names
//! are updated afterwards in one atomic rewrite of `names.json`.
//!
//! Archives are untrusted: digests are verified (blob digests where the archive names them, the
//! config's `rootfs.diff_ids` for every layer), and layers are applied by the `layer` module
//! without ever leaving the rootfs (see there).

mod archive;
mod compression;
mod digest;
mod error;
mod layer;
mod reference;
pub mod registry;
mod store;
#[cfg(test)]
mod testutil;

use self::reference::is_hex;
pub(crate) use self::reference::resolve_reference;
pub use self::{
    error::{ImageError, LayerProblem, ManifestProblem},
    reference::{MIN_PREFIX, normalize_name},
    store::{ImageStore, PullTx},
};

pub use crate::model::image::{Image, ImageConfig};
