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

/// Registry pulls since the agent started, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PullStats {
    pub succeeded: u64,
    pub failed: u64,
    /// Blob bytes downloaded (configs and layers, verified or not).
    pub bytes: u64,
}

/// One step of a registry pull, as `POST /api/v1/images/pull` streams it (one JSON object per
/// line) for the CLI's per-layer progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: the image id and how many layers it has.
    Resolved {
        /// The platform manifest's digest (`sha256:...`).
        manifest: String,
        id: String,
        layers: usize,
    },
    /// A layer berth already holds (a stored image has it, by digest): not downloaded.
    LayerExists { digest: String },
    /// Bytes of a layer downloaded so far.
    Downloading {
        digest: String,
        current: u64,
        total: u64,
    },
    /// A layer downloaded and verified against its digest.
    LayerDone { digest: String, total: u64 },
    /// The image is stored (last event of a successful pull).
    Pulled { image: Image },
    /// The pull failed after it started; nothing of it is kept (last event).
    Error { error: String },
}
