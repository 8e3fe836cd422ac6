//! Reading an image archive into an [`ImportPlan`]: which config, which layers (with the digests
//! they must have) and which names. Two formats, told apart by their top-level metadata:
//!
//! - `docker save` ([`docker`]): `manifest.json` -> config (`<hex>.json` or
//!   `blobs/sha256/<hex>`) and layer members; names from `RepoTags`.
//! - OCI image layout ([`oci`]): `index.json` -> (nested indexes) -> manifest -> config + layers
//!   in `blobs/sha256/`; names from the index entry's annotations.
//!
//! Both sit on the same tar [`index`] and share the config blob reader here. Every blob named
//! by a digest is verified before it is parsed or unpacked.

mod docker;
mod index;
mod oci;

use std::path::Path;

use serde::Deserialize;
use tracing::warn;

pub(crate) use self::index::Archive;
use super::{ImageConfig, ImageError, ManifestProblem, is_hex, normalize_name};

/// One layer to apply: where it is in the archive and what it must hash to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerSource {
    /// Archive member holding the (possibly compressed) layer tar.
    pub member: String,
    /// Expected sha256 of the member's bytes, when the archive names one.
    pub digest: Option<String>,
    /// Expected size of the member, when the archive states one.
    pub size: Option<u64>,
    /// Expected sha256 of the uncompressed layer tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// Everything an import needs, read and verified from the archive's metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImportPlan {
    /// Hex sha256 of the config blob.
    pub id: String,
    pub config: ImageConfig,
    pub layers: Vec<LayerSource>,
    /// Canonical names found in the archive.
    pub names: Vec<String>,
}

/// The parts of an image config blob berth uses; lenient, docker and OCI write the same keys.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl Archive {
    /// Reads the archive's metadata in whichever format it has.
    pub(crate) fn plan(&self) -> Result<ImportPlan, ImageError> {
        if self.contains("manifest.json") {
            self.plan_docker()
        } else if self.contains("index.json") {
            self.plan_oci()
        } else {
            Err(ImageError::NoManifest {
                path: self.path().to_path_buf(),
            })
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        file: &str,
        bytes: &[u8],
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::BadJson {
            path: self.path().to_path_buf(),
            file: file.to_string(),
            source,
        })
    }

    fn invalid(&self, file: &str, problem: ManifestProblem) -> ImageError {
        ImageError::InvalidManifest {
            path: self.path().to_path_buf(),
            file: file.to_string(),
            problem,
        }
    }

    /// The run configuration and the diff ids (hex) of an image config blob.
    fn parse_config(
        &self,
        member: &str,
        bytes: &[u8],
    ) -> Result<(ImageConfig, Vec<String>), ImageError> {
        parse_config(self.path(), member, bytes)
    }
}

/// The run configuration and the diff ids (hex) of an image config blob; `source` (an archive
/// path or a registry reference) and `member` name it in errors.
pub(crate) fn parse_config(
    source: &Path,
    member: &str,
    bytes: &[u8],
) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let invalid = |problem| ImageError::InvalidManifest {
        path: source.to_path_buf(),
        file: member.to_string(),
        problem,
    };
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| ImageError::BadJson {
        path: source.to_path_buf(),
        file: member.to_string(),
        source: e,
    })?;
    let run = raw.config.unwrap_or_default();
    let config = ImageConfig {
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        working_dir: run.working_dir.filter(|s| !s.is_empty()),
        user: run.user.filter(|s| !s.is_empty()),
    };
    let mut diff_ids = Vec::new();
    for diff_id in raw.rootfs.unwrap_or_default().diff_ids {
        match diff_id.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 && is_hex(hex) => diff_ids.push(hex.to_string()),
            Some(_) => {
                return Err(invalid(ManifestProblem::MalformedDiffId { diff_id }));
            }
            None => {
                return Err(ImageError::UnsupportedDigest {
                    path: source.to_path_buf(),
                    digest: diff_id,
                });
            }
        }
    }
    Ok((config, diff_ids))
}

/// Valid canonical names from an archive; invalid ones are logged and skipped.
fn canonical_names<'s>(names: impl Iterator<Item = &'s str>) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        match normalize_name(name) {
            Ok(name) if !out.contains(&name) => out.push(name),
            Ok(_) => {}
            Err(e) => warn!(%e, "ignoring a name found in the archive"),
        }
    }
    out
}
