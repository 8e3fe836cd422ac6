//! Errors of the image store, one enum for the whole `image` module, with the archive, layer,
//! entry or reference they concern in named fields. The API answers client mistakes (a bad
//! archive, a tampered blob, an unknown reference) with a 4xx and failures of berth's own store
//! with a 5xx, so [`ImageError::is_client_error`] lists every variant on one side or the other.

use std::path::PathBuf;

use super::MIN_PREFIX;
use crate::fsutil::FsError;

/// Errors importing, finding or removing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A durable write into berth's own store failed; the message names the step and path.
    #[error("image store: {source}")]
    Persist {
        #[from]
        source: FsError,
    },
    #[error("image archive {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error(
        "{path} is not a regular file (a device, FIFO, socket or /proc or /sys file): give the \
         path of an image archive"
    )]
    NotRegularFile { path: PathBuf },
    #[error("{path} cannot be read as an image archive: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a tar archive (plain or gzip-compressed): {source}")]
    NotTar {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} looks gzip-compressed but cannot be decompressed: {source}")]
    CorruptGzip {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is compressed with {format}; berth reads plain and gzip-compressed tar only")]
    UnsupportedCompression { path: PathBuf, format: &'static str },
    #[error(
        "layer {layer} is compressed with {format}; berth reads plain and gzip-compressed layers \
         only"
    )]
    UnsupportedLayerCompression { layer: String, format: &'static str },
    #[error(
        "{path} contains neither manifest.json (`docker save`) nor index.json (OCI image layout)"
    )]
    NoManifest { path: PathBuf },
    #[error("{path}: {file} is not valid JSON of the expected shape: {source}")]
    BadJson {
        path: PathBuf,
        file: String,
        source: serde_json::Error,
    },
    #[error("{path}: {file}: {problem}")]
    InvalidManifest {
        path: PathBuf,
        file: String,
        problem: ManifestProblem,
    },
    #[error("{path}: {file} is {size} bytes, more than the {limit} bytes allowed for metadata")]
    TooLarge {
        path: PathBuf,
        file: String,
        size: u64,
        limit: u64,
    },
    #[error("{path}: blob {blob} is missing from the archive")]
    MissingBlob { path: PathBuf, blob: String },
    #[error("{path}: digest mismatch for {blob}: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        path: PathBuf,
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: size mismatch for {blob}: expected {expected} bytes, found {actual}")]
    SizeMismatch {
        path: PathBuf,
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: digest {digest} uses an unsupported algorithm (only sha256 is supported)")]
    UnsupportedDigest { path: PathBuf, digest: String },
    #[error("layer {layer}: cannot read it: {source}")]
    LayerRead {
        layer: String,
        source: std::io::Error,
    },
    #[error("layer {layer}: entry {entry} would escape the root filesystem; refusing the image")]
    UnsafePath { layer: String, entry: String },
    #[error("layer {layer}: entry {entry}: {problem}")]
    InvalidLayer {
        layer: String,
        entry: String,
        problem: LayerProblem,
    },
    #[error("store metadata {path} is corrupt: {source}")]
    Metadata {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "no image matches {reference}: give a name (name:tag), an id or an id prefix of at least \
         {MIN_PREFIX} hex characters"
    )]
    UnknownReference { reference: String },
    #[error("{reference} matches {} images ({}); give more characters", candidates.len(), candidates.join(", "))]
    AmbiguousReference {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{reference}: the registry has no such tag or digest (manifest unknown)")]
    ManifestUnknown { reference: String },
    #[error("{reference}: registry {registry} refused the credentials: {message}")]
    Unauthorized {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{reference}: registry {registry} cannot be reached: {message}")]
    Unreachable {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{reference}: blob {digest} does not match its digest: {message}")]
    BlobDigestMismatch {
        reference: String,
        digest: String,
        message: String,
    },
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
}

/// What is wrong with an archive's metadata (manifest.json, index.json, a manifest or a config)
/// once it has parsed as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ManifestProblem {
    #[error("lists no image")]
    NoImage,
    #[error("lists no manifests")]
    NoManifests,
    #[error("config path {member:?} is not usable")]
    UnusableConfigPath { member: String },
    #[error("layer path {member:?} is not usable")]
    UnusableLayerPath { member: String },
    #[error("rootfs.diff_ids lists {diff_ids} layers but {manifest} lists {layers}")]
    LayerCountMismatch {
        diff_ids: usize,
        /// The document listing the layers, as the message names it.
        manifest: &'static str,
        layers: usize,
    },
    #[error("image indexes nest more than {limit} levels deep")]
    IndexTooDeep { limit: usize },
    #[error("media type {media_type} is neither an image manifest nor an index")]
    UnexpectedMediaType { media_type: String },
    #[error("digest {digest} is not 64 lowercase hex characters")]
    MalformedDigest { digest: String },
    #[error("diff id {diff_id} is not 64 lowercase hex characters")]
    MalformedDiffId { diff_id: String },
}

/// Why one entry of a layer tar cannot be applied (apart from escaping the rootfs, which is
/// [`ImageError::UnsafePath`]).
#[derive(Debug, thiserror::Error)]
pub enum LayerProblem {
    #[error("a parent, {parent}, is not a directory")]
    ParentNotDirectory { parent: PathBuf },
    #[error("a parent directory cannot be created")]
    ParentMissing,
    #[error("too many levels of symbolic links")]
    TooManySymlinks,
    #[error("symbolic link without a target")]
    SymlinkWithoutTarget,
    #[error("hard link without a target")]
    HardLinkWithoutTarget,
    #[error("hard link to the root directory")]
    HardLinkToRoot,
    #[error("hard link to a directory")]
    HardLinkToDirectory,
    #[error("hard link target {target} does not exist")]
    HardLinkTargetMissing { target: String },
    #[error("uid {uid} is out of range")]
    UidOutOfRange { uid: u64 },
    #[error("gid {gid} is out of range")]
    GidOutOfRange { gid: u64 },
}

impl ImageError {
    /// Whether the error is about the client's input (a bad archive, an unknown reference)
    /// rather than the host (I/O on berth's own store). Every variant is listed, so a new one
    /// has to be placed on a side.
    pub fn is_client_error(&self) -> bool {
        match self {
            ImageError::Io { .. } | ImageError::Persist { .. } | ImageError::Metadata { .. } => {
                false
            }
            ImageError::MissingFile { .. }
            | ImageError::NotRegularFile { .. }
            | ImageError::Unreadable { .. }
            | ImageError::NotTar { .. }
            | ImageError::CorruptGzip { .. }
            | ImageError::UnsupportedCompression { .. }
            | ImageError::UnsupportedLayerCompression { .. }
            | ImageError::NoManifest { .. }
            | ImageError::BadJson { .. }
            | ImageError::InvalidManifest { .. }
            | ImageError::TooLarge { .. }
            | ImageError::MissingBlob { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::UnsupportedDigest { .. }
            | ImageError::LayerRead { .. }
            | ImageError::UnsafePath { .. }
            | ImageError::InvalidLayer { .. }
            | ImageError::UnknownReference { .. }
            | ImageError::AmbiguousReference { .. }
            | ImageError::InvalidName { .. }
            | ImageError::InvalidReference { .. }
            | ImageError::ManifestUnknown { .. }
            | ImageError::Unauthorized { .. }
            | ImageError::Unreachable { .. }
            | ImageError::BlobDigestMismatch { .. }
            | ImageError::Registry { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io, path::Path};

    use super::*;

    #[test]
    fn failures_of_the_own_store_are_host_errors_and_bad_input_is_the_clients() {
        let io = || io::Error::other("boom");
        let json = || serde_json::from_slice::<u8>(b"x").unwrap_err();
        let persist = ImageError::from(
            crate::fsutil::write_atomic(Path::new("/nonexistent/berth/x"), b"").unwrap_err(),
        );
        for host in [
            ImageError::Io {
                path: "/var/lib/berth/images".into(),
                source: io(),
            },
            ImageError::Metadata {
                path: "/var/lib/berth/images/names.json".into(),
                source: json(),
            },
            persist,
        ] {
            assert!(!host.is_client_error(), "{host}");
        }
        for client in [
            ImageError::NotTar {
                path: "a.tar".into(),
                source: io(),
            },
            ImageError::InvalidManifest {
                path: "a.tar".into(),
                file: "manifest.json".into(),
                problem: ManifestProblem::NoImage,
            },
            ImageError::InvalidLayer {
                layer: "l".into(),
                entry: "e".into(),
                problem: LayerProblem::TooManySymlinks,
            },
            ImageError::UnsupportedLayerCompression {
                layer: "l".into(),
                format: "zstd",
            },
            ImageError::UnknownReference {
                reference: "x".into(),
            },
        ] {
            assert!(client.is_client_error(), "{client}");
        }
    }

    #[test]
    fn a_failed_store_write_names_the_step_and_the_path() {
        let e = ImageError::from(
            crate::fsutil::write_atomic(Path::new("/nonexistent/berth/names.json"), b"")
                .unwrap_err(),
        );
        let message = e.to_string();
        assert!(message.starts_with("image store: create "), "{message}");
        assert!(message.contains("/nonexistent/berth/"), "{message}");
    }
}
