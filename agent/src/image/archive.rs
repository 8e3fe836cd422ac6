//! Reading an image archive: detects gzip by magic bytes (decompressing into the import's scratch
//! directory), indexes the tar once (member -> offset, size, or link) so blobs are read in place
//! in any order, and turns either format into an [`ImportPlan`]:
//!
//! - `docker save`: `manifest.json` -> config (`<hex>.json` or `blobs/sha256/<hex>`) and layer
//!   members; names from `RepoTags`.
//! - OCI image layout: `index.json` -> (nested indexes) -> manifest -> config + layers in
//!   `blobs/sha256/`; names from the index entry's annotations.
//!
//! Every blob named by a digest is verified before it is parsed or unpacked.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use flate2::read::MultiGzDecoder;
use oci_spec::image::{Descriptor, DigestAlgorithm, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::{ImageConfig, ImageError, is_hex, normalize_name};

/// Largest JSON document (manifest, index, config) read into memory.
const JSON_LIMIT: u64 = 16 << 20;
/// Most links followed when a member is a symlink or hard link to another member.
const MAX_LINK_HOPS: usize = 16;
/// Deepest chain of nested image indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Compression recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Unsupported(&'static str),
}

/// Tells the compression of a stream from its first bytes.
pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Unsupported("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Unsupported("xz")
    } else if head.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else {
        Compression::None
    }
}

#[derive(Debug, Clone)]
enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Target as an archive path, already resolved against the link's directory.
    Link(String),
}

/// An indexed tar archive whose members are read in place.
pub(crate) struct Archive {
    /// The archive as the user named it, for messages.
    path: PathBuf,
    /// The plain tar: the archive itself or its decompressed copy in the scratch directory.
    file: File,
    members: HashMap<String, Member>,
}

/// A byte range of the archive file, read with pread so several can be open at once.
pub(crate) struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside a member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Normalizes a member name: no leading `./` or `/`, no trailing `/`, no `.` components.
/// Names with `..` are dropped: nothing in a valid image needs them.
fn member_key(name: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Resolves a symlink target found in member `from` to an archive path.
fn link_target(from: &str, target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut dir: Vec<&str> = from.split('/').collect();
        dir.pop();
        dir
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Archive {
    /// Opens `path`, decompressing it into `scratch` when it is gzip, and indexes its members.
    pub(crate) fn open(path: &Path, scratch: &Path) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ImageError::MissingFile {
                path: path.to_path_buf(),
            },
            _ => io_err(source),
        })?;
        if file.metadata().map_err(io_err)?.is_dir() {
            return Err(ImageError::NotTar {
                path: path.to_path_buf(),
                source: io::Error::other("it is a directory"),
            });
        }
        let mut head = [0u8; 8];
        let n = file.read_at(&mut head, 0).map_err(io_err)?;
        let file = match sniff(&head[..n]) {
            Compression::None => file,
            Compression::Unsupported(format) => {
                return Err(ImageError::UnsupportedCompression {
                    path: path.to_path_buf(),
                    format,
                });
            }
            Compression::Gzip => decompress(path, file, &scratch.join("archive.tar"))?,
        };
        let members = index(path, &file)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            members,
        })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    /// Offset and size of a member, following links between members.
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = name.to_string();
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(target) => name = target.clone(),
            }
        }
        None
    }

    /// A reader over member `name`, and its size.
    pub(crate) fn open_member(&self, name: &str) -> Result<(Section<'_>, u64), ImageError> {
        let (offset, size) = self.locate(name).ok_or_else(|| ImageError::MissingBlob {
            path: self.path.clone(),
            blob: name.to_string(),
        })?;
        Ok((
            Section {
                file: &self.file,
                pos: offset,
                end: offset + size,
            },
            size,
        ))
    }

    /// Reads a small member (JSON) whole.
    fn read_json_member(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let (mut section, size) = self.open_member(name)?;
        if size > JSON_LIMIT {
            return Err(ImageError::TooLarge {
                path: self.path.clone(),
                file: name.to_string(),
                size,
                limit: JSON_LIMIT,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        section
            .read_to_end(&mut bytes)
            .map_err(|source| self.not_tar(source))?;
        Ok(bytes)
    }

    fn not_tar(&self, source: io::Error) -> ImageError {
        ImageError::NotTar {
            path: self.path.clone(),
            source,
        }
    }

    /// Hashes member `name` and compares with the expected sha256 (and size, when known).
    pub(crate) fn verify(
        &self,
        name: &str,
        expected: &str,
        expected_size: Option<u64>,
    ) -> Result<(), ImageError> {
        let (mut section, size) = self.open_member(name)?;
        if let Some(expected_size) = expected_size
            && expected_size != size
        {
            return Err(ImageError::SizeMismatch {
                path: self.path.clone(),
                blob: name.to_string(),
                expected: expected_size,
                actual: size,
            });
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = section
                .read(&mut buf)
                .map_err(|source| self.not_tar(source))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        self.check_digest(name, expected, &hex(hasher))
    }

    pub(crate) fn check_digest(
        &self,
        blob: &str,
        expected: &str,
        actual: &str,
    ) -> Result<(), ImageError> {
        if expected == actual {
            Ok(())
        } else {
            Err(ImageError::DigestMismatch {
                path: self.path.clone(),
                blob: blob.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            })
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Lowercase hex of a finished sha256.
pub(crate) fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hex(hasher)
}

fn decompress(path: &Path, file: File, out_path: &Path) -> Result<File, ImageError> {
    let mut decoder = MultiGzDecoder::new(BufReader::new(file));
    let mut out = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out_path)
        .map_err(|source| ImageError::Io {
            path: out_path.to_path_buf(),
            source,
        })?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ImageError::CorruptGzip {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        out.write_all(&buf[..n]).map_err(|source| ImageError::Io {
            path: out_path.to_path_buf(),
            source,
        })?;
    }
    Ok(out)
}

fn index(path: &Path, file: &File) -> Result<HashMap<String, Member>, ImageError> {
    let not_tar = |source| ImageError::NotTar {
        path: path.to_path_buf(),
        source,
    };
    // A decompressed copy was just written: its cursor is at the end.
    let mut file = file;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    let mut count = 0usize;
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let entry = entry.map_err(not_tar)?;
        count += 1;
        let Some(key) = member_key(&entry.path_bytes()) else {
            debug!(archive = %path.display(), "skipping member with an unusable name");
            continue;
        };
        let member = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Symlink => {
                match entry.link_name_bytes().and_then(|t| link_target(&key, &t)) {
                    Some(target) => Member::Link(target),
                    None => continue,
                }
            }
            tar::EntryType::Link => match entry.link_name_bytes().and_then(|t| member_key(&t)) {
                Some(target) => Member::Link(target),
                None => continue,
            },
            _ => continue,
        };
        members.insert(key, member);
    }
    if count == 0 {
        return Err(not_tar(io::Error::new(
            io::ErrorKind::InvalidData,
            "no tar entries",
        )));
    }
    Ok(members)
}

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

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

impl Archive {
    /// Reads the archive's metadata in whichever format it has.
    pub(crate) fn plan(&self) -> Result<ImportPlan, ImageError> {
        if self.contains("manifest.json") {
            self.plan_docker()
        } else if self.contains("index.json") {
            self.plan_oci()
        } else {
            Err(ImageError::NoManifest {
                path: self.path.clone(),
            })
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        file: &str,
        bytes: &[u8],
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::BadJson {
            path: self.path.clone(),
            file: file.to_string(),
            source,
        })
    }

    fn invalid(&self, file: &str, reason: String) -> ImageError {
        ImageError::InvalidManifest {
            path: self.path.clone(),
            file: file.to_string(),
            reason,
        }
    }

    fn plan_docker(&self) -> Result<ImportPlan, ImageError> {
        let bytes = self.read_json_member("manifest.json")?;
        let manifests: Vec<DockerManifest> = self.parse("manifest.json", &bytes)?;
        let Some(manifest) = manifests.first() else {
            return Err(self.invalid("manifest.json", "lists no image".to_string()));
        };
        if manifests.len() > 1 {
            warn!(
                archive = %self.path.display(),
                images = manifests.len(),
                "archive holds several images; importing the first only"
            );
        }
        let config_member = member_key(manifest.config.as_bytes()).ok_or_else(|| {
            self.invalid(
                "manifest.json",
                format!("config path {:?} is not usable", manifest.config),
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
                format!(
                    "rootfs.diff_ids lists {} layers but manifest.json lists {}",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let member = member_key(layer.as_bytes()).ok_or_else(|| {
                self.invalid(
                    "manifest.json",
                    format!("layer path {layer:?} is not usable"),
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

    fn plan_oci(&self) -> Result<ImportPlan, ImageError> {
        if !self.contains("oci-layout") {
            debug!(archive = %self.path.display(), "index.json without oci-layout; reading it anyway");
        }
        let bytes = self.read_json_member("index.json")?;
        let index: ImageIndex = self.parse("index.json", &bytes)?;
        let top = self.choose(&index, "index.json")?.clone();
        let names = names_from_annotations(&top);

        let mut descriptor = top;
        let mut depth = 0;
        let manifest = loop {
            let member = self.blob_member(&descriptor)?;
            let bytes = self.read_verified_json(&descriptor, &member)?;
            if is_index(descriptor.media_type()) {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(self.invalid(&member, "image indexes nest too deep".to_string()));
                }
                let nested: ImageIndex = self.parse(&member, &bytes)?;
                descriptor = self.choose(&nested, &member)?.clone();
            } else if is_manifest(descriptor.media_type()) {
                break self.parse::<ImageManifest>(&member, &bytes)?;
            } else {
                return Err(self.invalid(
                    &member,
                    format!(
                        "media type {} is neither an image manifest nor an index",
                        descriptor.media_type()
                    ),
                ));
            }
        };

        let config_descriptor = manifest.config();
        let config_member = self.blob_member(config_descriptor)?;
        let config_bytes = self.read_verified_json(config_descriptor, &config_member)?;
        let id = sha256_hex(&config_bytes);
        let (config, diff_ids) = self.parse_config(&config_member, &config_bytes)?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(self.invalid(
                &config_member,
                format!(
                    "rootfs.diff_ids lists {} layers but the manifest lists {}",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let member = self.blob_member(descriptor)?;
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
            .ok_or_else(|| self.invalid(file, "lists no manifests".to_string()))
    }

    /// Archive member of a blob: `blobs/sha256/<hex>`.
    fn blob_member(&self, descriptor: &Descriptor) -> Result<String, ImageError> {
        let digest = descriptor.digest();
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(ImageError::UnsupportedDigest {
                path: self.path.clone(),
                digest: digest.to_string(),
            });
        }
        let hex = digest.digest();
        if hex.len() != 64 || !is_hex(hex) {
            return Err(self.invalid(
                "index.json",
                format!("digest {digest} is not 64 lowercase hex characters"),
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
                path: self.path.clone(),
                blob: member.to_string(),
                expected: descriptor.size(),
                actual: bytes.len() as u64,
            });
        }
        self.check_digest(member, descriptor.digest().digest(), &sha256_hex(&bytes))?;
        Ok(bytes)
    }

    /// The run configuration and the diff ids (hex) of an image config blob.
    fn parse_config(
        &self,
        member: &str,
        bytes: &[u8],
    ) -> Result<(ImageConfig, Vec<String>), ImageError> {
        let raw: RawConfig = self.parse(member, bytes)?;
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
                    return Err(self.invalid(
                        member,
                        format!("diff id {diff_id} is not 64 lowercase hex characters"),
                    ));
                }
                None => {
                    return Err(ImageError::UnsupportedDigest {
                        path: self.path.clone(),
                        digest: diff_id,
                    });
                }
            }
        }
        Ok((config, diff_ids))
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

/// The hex digest in `blobs/sha256/<hex>` or `<hex>.json`, if the member is named that way.
fn digest_in_member_name(member: &str) -> Option<String> {
    let hex = member
        .strip_prefix("blobs/sha256/")
        .or_else(|| member.strip_suffix(".json"))?;
    (hex.len() == 64 && is_hex(hex)).then(|| hex.to_string())
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

/// Wraps a reader and hashes what passes through it.
pub(crate) struct HashingReader<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
}

impl<'h, R> HashingReader<'h, R> {
    pub(crate) fn new(inner: R, hasher: &'h mut Sha256) -> Self {
        Self { inner, hasher }
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A layer stream, decompressed according to its first bytes.
pub(crate) enum LayerStream<R: BufRead> {
    Plain(R),
    Gzip(MultiGzDecoder<R>),
}

impl<R: BufRead> LayerStream<R> {
    pub(crate) fn new(mut inner: R, layer: &str) -> Result<Self, ImageError> {
        let head = inner.fill_buf().map_err(|source| ImageError::LayerRead {
            layer: layer.to_string(),
            source,
        })?;
        match sniff(head) {
            Compression::None => Ok(Self::Plain(inner)),
            Compression::Gzip => Ok(Self::Gzip(MultiGzDecoder::new(inner))),
            Compression::Unsupported(format) => Err(ImageError::UnsupportedCompression {
                path: PathBuf::from(layer),
                format,
            }),
        }
    }
}

impl<R: BufRead> Read for LayerStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalized_and_parent_references_dropped() {
        assert_eq!(
            member_key(b"./blobs/sha256/ab/").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(
            member_key(b"/manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(member_key(b"a/../../etc"), None);
        assert_eq!(member_key(b"./"), None);
    }

    #[test]
    fn member_symlinks_resolve_relative_to_their_directory_and_stay_inside() {
        assert_eq!(
            link_target("abc/layer.tar", b"../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(
            link_target("abc/layer.tar", b"../../../../etc/passwd").as_deref(),
            Some("etc/passwd")
        );
        assert_eq!(link_target("a/b", b"/blobs/x").as_deref(), Some("blobs/x"));
    }

    #[test]
    fn compression_is_told_by_magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Unsupported("zstd")
        );
        assert_eq!(sniff(b"etc/passwd\0"), Compression::None);
        assert_eq!(sniff(&[]), Compression::None);
    }

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
