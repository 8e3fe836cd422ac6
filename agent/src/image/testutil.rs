//! Builders for test archives: layer tars with arbitrary (also hostile) entries, and image
//! archives in both formats, as lists of members tests may tamper with before packing.

use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use serde_json::json;

use super::digest::sha256_hex;

/// One entry of a layer tar.
pub(crate) enum Entry<'a> {
    File(&'a str, &'a [u8]),
    /// Name, content, mode, uid, gid.
    FileWith(&'a str, &'a [u8], u32, u64, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
    /// A file with one extended attribute (PAX `SCHILY.xattr.<name>`).
    FileXattr(&'a str, &'a str, &'a [u8]),
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Written raw: `set_path` refuses `..`, and hostile names are the point of some tests.
    let bytes = name.as_bytes();
    assert!(bytes.len() < 100, "test names must fit the old header");
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let bytes = target.as_bytes();
    h.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
}

/// A layer tar with `entries`, in order.
pub(crate) fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (mut h, data): (tar::Header, &[u8]) = match entry {
            Entry::File(name, data) => (
                header(name, tar::EntryType::Regular, data.len() as u64, 0o644),
                data,
            ),
            Entry::FileWith(name, data, mode, uid, gid) => {
                let mut h = header(name, tar::EntryType::Regular, data.len() as u64, *mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                (h, data)
            }
            Entry::Dir(name) => (header(name, tar::EntryType::Directory, 0, 0o755), &[]),
            Entry::Symlink(name, target) => {
                let mut h = header(name, tar::EntryType::Symlink, 0, 0o777);
                set_link(&mut h, target);
                (h, &[])
            }
            Entry::Hardlink(name, target) => {
                let mut h = header(name, tar::EntryType::Link, 0, 0o644);
                set_link(&mut h, target);
                (h, &[])
            }
            Entry::CharDevice(name) => (header(name, tar::EntryType::Char, 0, 0o666), &[]),
            Entry::Fifo(name) => (header(name, tar::EntryType::Fifo, 0, 0o644), &[]),
            Entry::FileXattr(name, attr, value) => {
                let key = format!("SCHILY.xattr.{attr}");
                builder
                    .append_pax_extensions([(key.as_str(), *value)])
                    .unwrap();
                (header(name, tar::EntryType::Regular, 0, 0o755), &[])
            }
        };
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An archive's members, in order.
pub(crate) type Members = Vec<(String, Vec<u8>)>;

/// Packs members into a tar.
pub(crate) fn pack(members: &Members) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        builder.append(&h, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// An image config blob for layers with these uncompressed tars; `cmd` tells images apart.
pub(crate) fn config(layers: &[Vec<u8>], cmd: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": [cmd],
            "WorkingDir": "/work",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// OCI layout members for an image of `layers` (uncompressed tars; gzipped in the blobs when
/// `gzip_layers`), named `name` via the ref-name annotation.
pub(crate) fn oci(layers: &[Vec<u8>], cmd: &str, name: Option<&str>, gzip_layers: bool) -> Members {
    let mut members = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut blob = |bytes: Vec<u8>| {
        let digest = sha256_hex(&bytes);
        let size = bytes.len();
        members.push((format!("blobs/sha256/{digest}"), bytes));
        (format!("sha256:{digest}"), size)
    };
    let (config_digest, config_size) = blob(config(layers, cmd));
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| {
            let (bytes, media_type) = if gzip_layers {
                (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
            } else {
                (l.clone(), "application/vnd.oci.image.layer.v1.tar")
            };
            let (digest, size) = blob(bytes);
            json!({"mediaType": media_type, "digest": digest, "size": size})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layer_descriptors,
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = blob(manifest);
    let mut entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
    });
    if let Some(name) = name {
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap();
    members.push(("index.json".to_string(), index));
    members
}

/// Legacy `docker save` members: `<hex>.json` config, `<n>/layer.tar` layers, manifest.json.
pub(crate) fn docker(layers: &[Vec<u8>], cmd: &str, tags: &[&str], gzip_layers: bool) -> Members {
    let config = config(layers, cmd);
    let config_name = format!("{}.json", sha256_hex(&config));
    let mut members = vec![(config_name.clone(), config)];
    let mut layer_names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{i:064x}/layer.tar");
        let bytes = if gzip_layers { gzip(l) } else { l.clone() };
        members.push((name.clone(), bytes));
        layer_names.push(name);
    }
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": layer_names,
    }]))
    .unwrap();
    members.push(("manifest.json".to_string(), manifest));
    members
}
