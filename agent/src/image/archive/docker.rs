//! The `docker save` layout: `manifest.json` lists, per image, the config member, the layer
//! members (bottom first) and `RepoTags`. Nothing in it states a digest; where a member is named
//! after one (`<hex>.json`, `blobs/sha256/<hex>` since Docker 25) that digest is checked, and
//! every layer is checked anyway against the config's `rootfs.diff_ids`.

use serde::Deserialize;
use tracing::warn;

use super::{Archive, ImportPlan, LayerSource, canonical_names, index::member_key};
use crate::image::{ImageError, ManifestProblem, digest::sha256_hex, is_hex};

/// docker's `manifest.json` entry.
#[derive(Debug, Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl Archive {
    pub(super) fn plan_docker(&self) -> Result<ImportPlan, ImageError> {
        let bytes = self.read_json_member("manifest.json")?;
        let manifests: Vec<DockerManifest> = self.parse("manifest.json", &bytes)?;
        let Some(manifest) = manifests.first() else {
            return Err(self.invalid("manifest.json", ManifestProblem::NoImage));
        };
        if manifests.len() > 1 {
            warn!(
                archive = %self.path().display(),
                images = manifests.len(),
                "archive holds several images; importing the first only"
            );
        }
        let config_member = member_key(manifest.config.as_bytes()).ok_or_else(|| {
            self.invalid(
                "manifest.json",
                ManifestProblem::UnusableConfigPath {
                    member: manifest.config.clone(),
                },
            )
        })?;
        let config_bytes = self.read_json_member(&config_member)?;
        let id = sha256_hex(&config_bytes);
        if let Some(expected) = digest_in_member_name(&config_member) {
            self.check_digest(&config_member, &expected, &id)?;
        }
        let (config, diff_ids) = self.parse_config(&config_member, &config_bytes)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(self.invalid(
                &config_member,
                ManifestProblem::LayerCountMismatch {
                    diff_ids: diff_ids.len(),
                    manifest: "manifest.json",
                    layers: manifest.layers.len(),
                },
            ));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let member = member_key(layer.as_bytes()).ok_or_else(|| {
                self.invalid(
                    "manifest.json",
                    ManifestProblem::UnusableLayerPath {
                        member: layer.clone(),
                    },
                )
            })?;
            layers.push(LayerSource {
                digest: digest_in_member_name(&member),
                member,
                size: None,
                diff_id,
            });
        }
        let names = canonical_names(manifest.repo_tags.iter().flatten().map(String::as_str));
        Ok(ImportPlan {
            id,
            config,
            layers,
            names,
        })
    }
}

/// The hex digest in `blobs/sha256/<hex>` or `<hex>.json`, if the member is named that way.
fn digest_in_member_name(member: &str) -> Option<String> {
    let hex = member
        .strip_prefix("blobs/sha256/")
        .or_else(|| member.strip_suffix(".json"))?;
    (hex.len() == 64 && is_hex(hex)).then(|| hex.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_read_from_docker_member_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_member_name(&format!("blobs/sha256/{hex}")),
            Some(hex.clone())
        );
        assert_eq!(
            digest_in_member_name(&format!("{hex}.json")),
            Some(hex.clone())
        );
        assert_eq!(digest_in_member_name(&format!("{hex}/layer.tar")), None);
        assert_eq!(digest_in_member_name("blobs/sha256/zz"), None);
    }
}
