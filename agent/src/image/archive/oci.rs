//! The OCI image layout (image-spec `image-layout.md`): `index.json` points, possibly through
//! nested indexes (multi-platform images), at a manifest, which names the config and the layers
//! by descriptor (media type, sha256 digest, size) in `blobs/sha256/`. Every descriptor is
//! verified by size and digest before its blob is used; from an index, the manifest for this
//! host's platform is chosen. Docker's manifest-list and manifest media types are accepted too.

use oci_spec::image::{Descriptor, DigestAlgorithm, ImageIndex, ImageManifest, MediaType};
use tracing::debug;

use super::{Archive, ImportPlan, LayerSource, canonical_names};
use crate::image::{ImageError, ManifestProblem, digest::sha256_hex, is_hex};

/// Deepest chain of nested image indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

impl Archive {
    pub(super) fn plan_oci(&self) -> Result<ImportPlan, ImageError> {
        if !self.contains("oci-layout") {
            debug!(archive = %self.path().display(), "index.json without oci-layout; reading it anyway");
        }
        let bytes = self.read_json_member("index.json")?;
        let index: ImageIndex = self.parse("index.json", &bytes)?;
        let top = self.choose(&index, "index.json")?.clone();
        let names = names_from_annotations(&top);

        let mut descriptor = top;
        // The document naming `descriptor`, for messages about it.
        let mut listed_in = "index.json".to_string();
        let mut depth = 0;
        let (manifest, manifest_member) = loop {
            let member = self.blob_member(&descriptor, &listed_in)?;
            let bytes = self.read_verified_json(&descriptor, &member)?;
            if is_index(descriptor.media_type()) {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(self.invalid(
                        &member,
                        ManifestProblem::IndexTooDeep {
                            limit: MAX_INDEX_DEPTH,
                        },
                    ));
                }
                let nested: ImageIndex = self.parse(&member, &bytes)?;
                descriptor = self.choose(&nested, &member)?.clone();
                listed_in = member;
            } else if is_manifest(descriptor.media_type()) {
                break (self.parse::<ImageManifest>(&member, &bytes)?, member);
            } else {
                return Err(self.invalid(
                    &member,
                    ManifestProblem::UnexpectedMediaType {
                        media_type: descriptor.media_type().to_string(),
                    },
                ));
            }
        };

        let config_descriptor = manifest.config();
        let config_member = self.blob_member(config_descriptor, &manifest_member)?;
        let config_bytes = self.read_verified_json(config_descriptor, &config_member)?;
        let id = sha256_hex(&config_bytes);
        let (config, diff_ids) = self.parse_config(&config_member, &config_bytes)?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(self.invalid(
                &config_member,
                ManifestProblem::LayerCountMismatch {
                    diff_ids: diff_ids.len(),
                    manifest: "the manifest",
                    layers: manifest.layers().len(),
                },
            ));
        }
        let mut layers = Vec::new();
        for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let member = self.blob_member(descriptor, &manifest_member)?;
            layers.push(LayerSource {
                digest: Some(descriptor.digest().digest().to_string()),
                member,
                size: Some(descriptor.size()),
                diff_id,
            });
        }
        Ok(ImportPlan {
            id,
            config,
            layers,
            names,
        })
    }

    /// Picks the manifest for this host from an index: linux on this architecture, else the
    /// first entry that is not an attestation (`unknown/unknown`), else the first.
    fn choose<'i>(&self, index: &'i ImageIndex, file: &str) -> Result<&'i Descriptor, ImageError> {
        let manifests = index.manifests();
        let arch = host_arch();
        let matching = manifests.iter().find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        });
        let usable = || {
            manifests.iter().find(|d| {
                d.platform()
                    .as_ref()
                    .is_none_or(|p| p.os().to_string() != "unknown")
            })
        };
        matching
            .or_else(usable)
            .or_else(|| manifests.first())
            .ok_or_else(|| self.invalid(file, ManifestProblem::NoManifests))
    }

    /// Archive member of a blob: `blobs/sha256/<hex>`. `listed_in` is the document holding
    /// the descriptor.
    fn blob_member(&self, descriptor: &Descriptor, listed_in: &str) -> Result<String, ImageError> {
        let digest = descriptor.digest();
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(ImageError::UnsupportedDigest {
                path: self.path().to_path_buf(),
                digest: digest.to_string(),
            });
        }
        let hex = digest.digest();
        if hex.len() != 64 || !is_hex(hex) {
            return Err(self.invalid(
                listed_in,
                ManifestProblem::MalformedDigest {
                    digest: digest.to_string(),
                },
            ));
        }
        Ok(format!("blobs/sha256/{hex}"))
    }

    fn read_verified_json(
        &self,
        descriptor: &Descriptor,
        member: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read_json_member(member)?;
        if bytes.len() as u64 != descriptor.size() {
            return Err(ImageError::SizeMismatch {
                path: self.path().to_path_buf(),
                blob: member.to_string(),
                expected: descriptor.size(),
                actual: bytes.len() as u64,
            });
        }
        self.check_digest(member, descriptor.digest().digest(), &sha256_hex(&bytes))?;
        Ok(bytes)
    }
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(other) => other == DOCKER_MANIFEST_LIST,
        _ => false,
    }
}

fn is_manifest(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageManifest => true,
        MediaType::Other(other) => other == DOCKER_MANIFEST,
        _ => false,
    }
}

/// GOARCH spelling of the architecture berth runs on.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Names of an OCI index entry: containerd's full name when present, else the OCI ref name
/// (which may be a full name or, per the spec's examples, a bare tag; taken as written).
fn names_from_annotations(descriptor: &Descriptor) -> Vec<String> {
    let Some(annotations) = descriptor.annotations() else {
        return Vec::new();
    };
    let name = annotations
        .get(ANNOTATION_CONTAINERD_NAME)
        .or_else(|| annotations.get(ANNOTATION_REF_NAME));
    canonical_names(name.into_iter().map(String::as_str))
}
