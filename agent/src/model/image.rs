//! An image in berth's store, as the snapshot and the API show it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An imported image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Image {
    /// Hex sha256 of the image config blob (docker's image id).
    pub id: String,
    /// Names pointing at this image, sorted, e.g. `["busybox:latest"]`.
    pub names: Vec<String>,
    /// The unpacked root filesystem, all layers applied. Treat it as read-only.
    #[schema(value_type = String)]
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Bytes of regular files in the unpacked rootfs (hard links counted once).
    pub size_bytes: u64,
    /// When the image was first imported, in unix seconds.
    pub imported_at: u64,
}

/// What the image says about how to run it (the `config` object of the image config blob).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}
