//! `berth pull`: images from registries over the OCI distribution protocol, through the
//! `oci-client` crate (token auth, index resolution to the host's platform, blob digest
//! checks), so berth keeps only what is its own: which registries may be plain HTTP (loopback
//! and the configured insecure ones), where credentials come from (Docker's
//! `~/.docker/config.json` `auths`), and storing through the image store's pull transaction
//! ([`super::store::PullTx`]), which unpacks and renames atomically like an import.
//!
//! An image whose config digest (its id) is already stored is not downloaded again: only the
//! manifest is fetched and the name moved. Blobs are downloaded into the transaction's scratch
//! directory and verified against their digests as they arrive; any failure drops the
//! transaction, which removes every byte of the attempt.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use base64::Engine as _;
use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    manifest::OciDescriptor,
    secrets::RegistryAuth,
};
use tracing::{info, warn};

use futures_util::StreamExt as _;

use super::{Image, ImageError, ImageStore, archive::parse_config, normalize_name};
use crate::model::PullEvent;

/// Upper bound of a config blob kept in memory.
const CONFIG_LIMIT: usize = 4 << 20;

/// Which registries a pull may reach over plain HTTP, beyond loopback ones.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `host[:port]` of registries served over plain HTTP (`[images] insecure_registries`).
    pub insecure_registries: Vec<String>,
    /// Docker's client config (`config.json` with `auths`), if any.
    pub docker_config: Option<PathBuf>,
    /// Per-registry CA files, Docker's `certs.d` layout (`<dir>/<host[:port]>/*.crt`); empty:
    /// none.
    pub certs_dir: PathBuf,
}

/// A reference as the user typed it, parsed with Docker's defaults (`docker.io`, `library/`,
/// `:latest`).
#[derive(Debug, Clone)]
pub struct PullRef {
    reference: Reference,
    typed: String,
}

impl PullRef {
    pub fn parse(typed: &str) -> Result<Self, ImageError> {
        let reference: Reference = typed.parse().map_err(|e| ImageError::InvalidReference {
            reference: typed.to_string(),
            reason: format!("{e}"),
        })?;
        Ok(Self {
            reference,
            typed: typed.to_string(),
        })
    }

    /// The store name of a tag reference (`busybox:latest`, `host:5000/app:v1`); none for a
    /// digest reference.
    pub fn name(&self) -> Result<Option<String>, ImageError> {
        if self.reference.digest().is_some() && self.typed.contains('@') {
            return Ok(None);
        }
        let tag = self.reference.tag().unwrap_or("latest");
        let name = format!(
            "{}/{}:{tag}",
            self.reference.registry(),
            self.reference.repository()
        );
        normalize_name(&name).map(Some)
    }
}

/// Layers downloaded at once (Docker's default is 3 too).
const CONCURRENT_LAYERS: usize = 3;

/// Where a pull reports its steps (the API streams them; the agent's log gets them too).
pub type Progress<'a> = &'a (dyn Fn(PullEvent) + Send + Sync);

/// Pulls `typed` into `store` and returns the stored image; counted in the store's pull
/// counters either way.
pub async fn pull(
    store: &ImageStore,
    typed: &str,
    opts: &PullOptions,
    progress: Progress<'_>,
) -> Result<Image, ImageError> {
    let result = pull_counted(store, typed, opts, progress).await;
    let c = store.pull_counters();
    match &result {
        Ok(_) => c.succeeded.fetch_add(1, Ordering::Relaxed),
        Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
    };
    result
}

async fn pull_counted(
    store: &ImageStore,
    typed: &str,
    opts: &PullOptions,
    progress: Progress<'_>,
) -> Result<Image, ImageError> {
    let pref = PullRef::parse(typed)?;
    let names: Vec<String> = pref.name()?.into_iter().collect();
    let reference = &pref.reference;
    let registry = reference.resolve_registry().to_string();
    let host = reference.registry().to_string();
    // A registry given CA files speaks TLS, loopback or not; other loopback and listed
    // registries speak plain HTTP.
    let cas = registry_cas(&opts.certs_dir, &host)?;
    let plain_http =
        cas.is_none() && (is_loopback(&host) || opts.insecure_registries.contains(&host));
    let client = Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: cas.unwrap_or_default(),
        ..Default::default()
    });
    let auth = credentials(opts, &host);
    let fail = |e| registry_error(typed, &host, e);

    let (manifest, manifest_digest) = client
        .pull_image_manifest(reference, &auth)
        .await
        .map_err(fail)?;
    let id = hex_of(typed, &manifest.config)?;
    progress(PullEvent::Resolved {
        manifest: manifest_digest.clone(),
        id: id.clone(),
        layers: manifest.layers.len(),
    });
    if store.contains(&id) {
        info!(reference = %typed, %id, manifest = %manifest_digest, "image already stored; no blob fetched");
        for layer in &manifest.layers {
            progress(PullEvent::LayerExists {
                digest: layer.digest.clone(),
            });
        }
        let store = store.clone();
        return blocking(move || store.tag(&id, &names)).await;
    }
    let tx = {
        let store = store.clone();
        blocking(move || store.begin_pull()).await?
    };
    let mut config = Vec::new();
    if manifest.config.size < 0 || manifest.config.size as usize > CONFIG_LIMIT {
        return Err(ImageError::Registry {
            reference: typed.to_string(),
            message: format!(
                "config blob {} is {} bytes, more than the {CONFIG_LIMIT} allowed",
                manifest.config.digest, manifest.config.size
            ),
        });
    }
    client
        .pull_blob(reference, &manifest.config, &mut config)
        .await
        .map_err(|e| blob_error(typed, &host, &manifest.config.digest, e))?;
    store
        .pull_counters()
        .bytes
        .fetch_add(config.len() as u64, Ordering::Relaxed);
    // Layers a stored image already has (the longest stored stack the config's diff ids start
    // with) are not downloaded: the new rootfs starts as a copy of that image's.
    let (_, diff_ids) = parse_config(Path::new(typed), "config", &config)?;
    let base = store.base_for(&diff_ids)?;
    let shared = base.as_ref().map_or(0, |(_, n)| *n);
    for layer in manifest.layers.iter().take(shared) {
        progress(PullEvent::LayerExists {
            digest: layer.digest.clone(),
        });
    }
    let mut layers = Vec::new();
    for layer in manifest.layers.iter().skip(shared) {
        layers.push(hex_of(typed, layer)?);
    }
    let source = Source {
        client: &client,
        reference,
        typed,
        host: &host,
    };
    let mut downloads = Vec::new();
    for (layer, hex) in manifest.layers.iter().skip(shared).zip(&layers) {
        downloads.push(download(
            &source,
            layer,
            tx.blob_path(hex),
            &store.pull_counters().bytes,
            progress,
        ));
    }
    let results: Vec<Result<u64, ImageError>> = futures_util::stream::iter(downloads)
        .buffer_unordered(CONCURRENT_LAYERS)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let typed_owned = typed.to_string();
    let base_id = base.map(|(id, _)| id);
    blocking(move || {
        tx.commit(
            &typed_owned,
            &id,
            &config,
            base_id.as_deref(),
            &layers,
            &names,
        )
    })
    .await
}

/// Where blobs come from: the client, the reference, and how errors name them.
struct Source<'a> {
    client: &'a Client,
    reference: &'a Reference,
    typed: &'a str,
    host: &'a str,
}

/// Downloads one layer into `path`, verified against its digest as it arrives, reporting
/// progress at most every 256 KiB; returns its size.
async fn download(
    from: &Source<'_>,
    layer: &OciDescriptor,
    path: PathBuf,
    bytes: &AtomicU64,
    progress: Progress<'_>,
) -> Result<u64, ImageError> {
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
    let total = u64::try_from(layer.size).unwrap_or(0);
    let mut out = Counting {
        inner: tokio::io::BufWriter::new(file),
        written: 0,
        reported: 0,
        bytes,
        report: &|current| {
            progress(PullEvent::Downloading {
                digest: layer.digest.clone(),
                current,
                total,
            })
        },
    };
    from.client
        .pull_blob(from.reference, layer, &mut out)
        .await
        .map_err(|e| blob_error(from.typed, from.host, &layer.digest, e))?;
    progress(PullEvent::LayerDone {
        digest: layer.digest.clone(),
        total: out.written,
    });
    Ok(out.written)
}

/// An `AsyncWrite` that counts what passes through and reports every [`REPORT_EVERY`] bytes.
struct Counting<'a, W> {
    inner: W,
    written: u64,
    reported: u64,
    /// The store's byte counter, fed as bytes arrive (a failed pull's bytes count too).
    bytes: &'a AtomicU64,
    report: &'a (dyn Fn(u64) + Send + Sync),
}

const REPORT_EVERY: u64 = 256 << 10;

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.written += *n as u64;
            this.bytes.fetch_add(*n as u64, Ordering::Relaxed);
            if this.written - this.reported >= REPORT_EVERY {
                this.reported = this.written;
                (this.report)(this.written);
            }
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Io {
            path: PathBuf::from("<pull task>"),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// The hex of a descriptor's sha256 digest; other algorithms are refused.
fn hex_of(typed: &str, d: &OciDescriptor) -> Result<String, ImageError> {
    match d.digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && super::is_hex(hex) => Ok(hex.to_string()),
        _ => Err(ImageError::Registry {
            reference: typed.to_string(),
            message: format!(
                "digest {} is not sha256 of 64 lowercase hex characters",
                d.digest
            ),
        }),
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
fn is_loopback(host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The CA certificates trusted for `host` only: every `*.crt` (PEM) in `<certs_dir>/<host>/`,
/// as Docker reads `/etc/docker/certs.d`. None when that directory does not exist; an
/// unreadable file is an error naming it (a registry the operator meant to trust would fail
/// later, less clearly).
fn registry_cas(certs_dir: &Path, host: &str) -> Result<Option<Vec<Certificate>>, ImageError> {
    if certs_dir.as_os_str().is_empty() || host.contains('/') || host.starts_with('.') {
        return Ok(None);
    }
    let dir = certs_dir.join(host);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ImageError::Io { path: dir, source }),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    let mut cas = Vec::new();
    for path in paths {
        let data = std::fs::read(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        info!(registry = %host, ca = %path.display(), "trusting a per-registry CA");
        cas.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(Some(cas))
}

/// Basic credentials for `host` from Docker's `config.json` `auths` (the base64 `auth`
/// field, `user:password`); anonymous otherwise (token auth is negotiated by the client).
fn credentials(opts: &PullOptions, host: &str) -> RegistryAuth {
    let Some(path) = &opts.docker_config else {
        return RegistryAuth::Anonymous;
    };
    let Ok(bytes) = std::fs::read(path) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        warn!(path = %path.display(), "Docker's config.json is not JSON; pulling anonymously");
        return RegistryAuth::Anonymous;
    };
    let keys: Vec<String> = if host == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]
    } else {
        vec![
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    for key in keys {
        let Some(auth) = json["auths"][key.as_str()]["auth"].as_str() else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return RegistryAuth::Basic(user.to_string(), password.to_string());
        }
        warn!(path = %path.display(), registry = %key, "unreadable auth entry; pulling anonymously");
    }
    RegistryAuth::Anonymous
}

fn blob_error(typed: &str, host: &str, digest: &str, e: OciDistributionError) -> ImageError {
    match e {
        OciDistributionError::DigestError(d) => ImageError::BlobDigestMismatch {
            reference: typed.to_string(),
            digest: digest.to_string(),
            message: d.to_string(),
        },
        other => registry_error(typed, host, other),
    }
}

/// The registry's failures, told apart as a user needs them.
fn registry_error(typed: &str, host: &str, e: OciDistributionError) -> ImageError {
    let reference = typed.to_string();
    let registry = host.to_string();
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            ImageError::ManifestUnknown { reference }
        }
        OciDistributionError::AuthenticationFailure(message) => ImageError::Unauthorized {
            reference,
            registry,
            message,
        },
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            reference,
            registry,
            message: format!("401 from {url}"),
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let codes = format!("{envelope:?}");
            if codes.contains("ManifestUnknown") || codes.contains("NameUnknown") {
                ImageError::ManifestUnknown { reference }
            } else if codes.contains("Unauthorized") || codes.contains("Denied") {
                ImageError::Unauthorized {
                    reference,
                    registry,
                    message: format!("{envelope} ({url})"),
                }
            } else {
                ImageError::Registry {
                    reference,
                    message: format!("registry error {envelope} ({url})"),
                }
            }
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            ImageError::Unreachable {
                reference,
                registry,
                message: error_chain(&r),
            }
        }
        OciDistributionError::DigestError(d) => ImageError::BlobDigestMismatch {
            reference,
            digest: "manifest".into(),
            message: d.to_string(),
        },
        other => ImageError::Registry {
            reference,
            message: error_chain(&other),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_dockers_defaults_and_familiar_names() {
        let name = |r: &str| PullRef::parse(r).unwrap().name().unwrap();
        assert_eq!(name("busybox").as_deref(), Some("busybox:latest"));
        assert_eq!(
            name("docker.io/library/busybox:1.36").as_deref(),
            Some("busybox:1.36")
        );
        assert_eq!(name("user/app:v1").as_deref(), Some("user/app:v1"));
        assert_eq!(
            name("127.0.0.1:5000/team/app:v2").as_deref(),
            Some("127.0.0.1:5000/team/app:v2")
        );
        let digest = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(name(&digest), None);
        assert!(PullRef::parse("Not A Ref").is_err());
    }

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for h in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "docker.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
