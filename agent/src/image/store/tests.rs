//! Store behaviour end to end on archives built in memory: both formats, names, reuse,
//! removal, tampered and malformed input (each leaving no trace), and restarts.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::ImageStore;
use crate::image::{
    ImageError, ManifestProblem, digest,
    testutil::{Entry::*, Members, config, docker, gzip, layer, oci, pack},
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: ImageStore,
    work: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    Fixture {
        _dir: dir,
        store,
        work,
    }
}

impl Fixture {
    fn write(&self, file: &str, bytes: &[u8]) -> PathBuf {
        let path = self.work.join(file);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn archive(&self, file: &str, members: &Members) -> PathBuf {
        self.write(file, &pack(members))
    }

    /// Nothing but the empty skeleton is left in the store.
    fn assert_no_trace(&self) {
        assert!(self.store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(self.store.tmp_dir()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(self.store.images_dir()).unwrap().count(), 0);
        assert!(self.store.read_names().unwrap().is_empty());
    }
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            Dir("bin"),
            FileWith("bin/tool", b"#!/bin/sh\n", 0o755, 0, 0),
            Dir("etc"),
            File("etc/gone", b"x"),
            Dir("cache"),
            File("cache/old", b"x"),
        ]),
        layer(&[
            File("etc/.wh.gone", b""),
            Dir("cache"),
            File("cache/.wh..wh..opq", b""),
            File("cache/new", b"y"),
        ]),
    ]
}

fn assert_two_layer_rootfs(rootfs: &Path) {
    assert!(rootfs.join("bin/tool").is_file());
    assert!(!rootfs.join("etc/gone").exists());
    assert!(rootfs.join("etc").is_dir());
    assert!(!rootfs.join("cache/old").exists());
    assert!(rootfs.join("cache/new").is_file());
    assert!(!rootfs.join("etc/.wh.gone").exists());
    assert!(!rootfs.join("cache/.wh..wh..opq").exists());
}

#[test]
fn an_oci_archive_imports_with_its_name_config_and_rootfs() {
    let f = fixture();
    let path = f.archive(
        "img.tar",
        &oci(&two_layers(), "run", Some("test/app:v1"), true),
    );
    let image = f.store.import(&path, None).unwrap();
    assert_eq!(image.names, ["test/app:v1"]);
    assert_eq!(image.config.cmd, ["run"]);
    assert_eq!(image.config.env, ["PATH=/bin"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(image.config.user, None);
    assert_eq!(image.size_bytes, 10 + 1);
    assert!(image.imported_at > 0);
    assert_two_layer_rootfs(&image.rootfs);
    assert_eq!(f.store.list().unwrap(), std::slice::from_ref(&image));
    assert_eq!(f.store.get("test/app:v1").unwrap(), image);
}

#[test]
fn a_docker_save_archive_with_gzip_layers_imports_with_its_tags() {
    let f = fixture();
    let members = docker(&two_layers(), "run", &["app:1", "app:latest"], true);
    let image = f.store.import(&f.archive("d.tar", &members), None).unwrap();
    assert_eq!(image.names, ["app:1", "app:latest"]);
    assert_two_layer_rootfs(&image.rootfs);
    assert_eq!(f.store.get("app").unwrap().id, image.id);
}

#[test]
fn a_gzip_compressed_archive_is_detected_by_content_not_name() {
    let f = fixture();
    let bytes = gzip(&pack(&oci(&two_layers(), "run", None, false)));
    let image = f
        .store
        .import(&f.write("plain-looking.tar", &bytes), Some("z"))
        .unwrap();
    assert_eq!(image.names, ["z:latest"]);
    assert_two_layer_rootfs(&image.rootfs);
    assert_eq!(fs::read_dir(f.store.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn the_image_id_is_the_sha256_of_the_config_blob() {
    let f = fixture();
    let layers = two_layers();
    let expected = digest::sha256_hex(&config(&layers, "run"));
    let image = f
        .store
        .import(&f.archive("a.tar", &oci(&layers, "run", None, true)), None)
        .unwrap();
    assert_eq!(image.id, expected);
    assert_eq!(
        f.store.get(&format!("sha256:{expected}")).unwrap().id,
        expected
    );
    assert_eq!(f.store.get(&expected[..8]).unwrap().id, expected);
}

#[test]
fn reimporting_the_same_image_reuses_the_rootfs_and_adds_the_name() {
    let f = fixture();
    let members = oci(&two_layers(), "run", Some("a:1"), true);
    let first = f.store.import(&f.archive("a.tar", &members), None).unwrap();
    let marker = first.rootfs.join("marker");
    fs::write(&marker, b"same dir").unwrap();
    let docker_form = docker(&two_layers(), "run", &["b:2"], false);
    let second = f
        .store
        .import(&f.archive("b.tar", &docker_form), Some("c"))
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.imported_at, first.imported_at);
    assert_eq!(second.names, ["a:1", "b:2", "c:latest"]);
    assert!(marker.exists(), "the rootfs was unpacked again");
    assert_eq!(f.store.list().unwrap().len(), 1);
}

#[test]
fn a_name_moves_to_the_newly_imported_image() {
    let f = fixture();
    let old = f
        .store
        .import(
            &f.archive("1.tar", &oci(&two_layers(), "v1", Some("app:v1"), true)),
            Some("app"),
        )
        .unwrap();
    let new = f
        .store
        .import(
            &f.archive("2.tar", &oci(&two_layers(), "v2", None, true)),
            Some("app:latest"),
        )
        .unwrap();
    assert_ne!(old.id, new.id);
    assert_eq!(new.names, ["app:latest"]);
    assert_eq!(f.store.get(&old.id).unwrap().names, ["app:v1"]);
    assert_eq!(f.store.get("app").unwrap().id, new.id);
    assert_eq!(f.store.list().unwrap().len(), 2);
}

#[test]
fn remove_deletes_the_rootfs_and_every_name() {
    let f = fixture();
    let image = f
        .store
        .import(
            &f.archive("a.tar", &oci(&two_layers(), "run", Some("a:1"), true)),
            Some("b"),
        )
        .unwrap();
    let removed = f.store.remove("b").unwrap();
    assert_eq!(removed, image);
    assert!(!image.rootfs.exists());
    assert!(matches!(
        f.store.get("a:1"),
        Err(ImageError::UnknownReference { .. })
    ));
    assert!(matches!(
        f.store.remove(&image.id),
        Err(ImageError::UnknownReference { .. })
    ));
    f.assert_no_trace();
}

#[test]
fn a_tampered_layer_blob_is_a_digest_mismatch_and_leaves_no_trace() {
    let f = fixture();
    let mut members = oci(&two_layers(), "run", Some("a"), false);
    // Members: oci-layout, config, layer 1, ...; byte 1024 is the content of bin/tool.
    let blob = &mut members[2].1;
    assert_eq!(&blob[1024..1026], b"#!");
    blob[1024] = b'X';
    let err = f
        .store
        .import(&f.archive("t.tar", &members), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("blobs/sha256/"), "{err}");
    f.assert_no_trace();
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_a_digest_mismatch() {
    let f = fixture();
    let mut members = docker(&two_layers(), "run", &["a"], false);
    members[1].1 = layer(&[File("other", b"")]);
    let err = f
        .store
        .import(&f.archive("t.tar", &members), None)
        .unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { ref blob, .. } if blob.contains("diff_ids[0]")),
        "{err}"
    );
    f.assert_no_trace();
}

#[test]
fn a_tampered_docker_config_is_a_digest_mismatch() {
    let f = fixture();
    let mut members = docker(&two_layers(), "run", &["a"], false);
    members[0].1 = config(&two_layers(), "other");
    let err = f
        .store
        .import(&f.archive("t.tar", &members), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
}

#[test]
fn a_path_traversal_in_a_layer_rejects_the_image_and_leaves_no_trace() {
    let f = fixture();
    let layers = vec![layer(&[
        File("ok", b""),
        File("../../../../tmp/berth-evil", b"x"),
    ])];
    let err = f
        .store
        .import(
            &f.archive("e.tar", &oci(&layers, "run", Some("evil"), true)),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    assert!(!Path::new("/tmp/berth-evil").exists());
    f.assert_no_trace();
}

#[test]
fn a_corrupt_gzip_archive_is_reported_as_such() {
    let f = fixture();
    let mut bytes = gzip(&pack(&oci(&two_layers(), "run", None, false)));
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].fill(0xAA);
    let err = f
        .store
        .import(&f.write("c.tar.gz", &bytes), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::CorruptGzip { .. }), "{err}");
    f.assert_no_trace();
}

#[test]
fn a_corrupt_gzip_layer_is_a_layer_read_error() {
    let f = fixture();
    let mut members = docker(&two_layers(), "run", &["a"], true);
    let blob = &mut members[1].1;
    let mid = blob.len() / 2;
    blob[mid..].fill(0x55);
    let err = f
        .store
        .import(&f.archive("c.tar", &members), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::LayerRead { .. }), "{err}");
    f.assert_no_trace();
}

#[test]
fn a_file_that_is_not_a_tar_is_reported() {
    let f = fixture();
    for (file, bytes) in [
        ("random.tar", vec![0x42u8; 2048]),
        ("empty.tar", Vec::new()),
        ("short.tar", b"hello".to_vec()),
    ] {
        let err = f.store.import(&f.write(file, &bytes), None).unwrap_err();
        assert!(matches!(err, ImageError::NotTar { .. }), "{file}: {err}");
    }
    let err = f.store.import(&f.work, None).unwrap_err();
    assert!(matches!(err, ImageError::NotTar { .. }), "{err}");
    f.assert_no_trace();
}

#[test]
fn a_missing_archive_is_reported_with_its_path() {
    let f = fixture();
    let missing = f.work.join("nope.tar");
    let err = f.store.import(&missing, None).unwrap_err();
    assert!(matches!(err, ImageError::MissingFile { ref path } if *path == missing));
    f.assert_no_trace();
}

#[test]
fn kernel_files_and_devices_are_refused_as_the_callers_mistake() {
    let f = fixture();
    for p in [
        "/proc/self/mem",
        "/proc/self/status",
        "/dev/zero",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        let p = std::path::Path::new(p);
        if !p.exists() {
            continue;
        }
        let err = f.store.import(p, None).unwrap_err();
        assert!(
            matches!(err, ImageError::NotRegularFile { ref path } if path == p),
            "{}: {err}",
            p.display()
        );
        assert!(err.is_client_error(), "{err}");
        assert!(err.to_string().contains(&*p.to_string_lossy()), "{err}");
    }
    f.assert_no_trace();
}

#[test]
fn a_tar_without_manifest_or_index_is_reported() {
    let f = fixture();
    let members = vec![("hello.txt".to_string(), b"hi".to_vec())];
    let err = f
        .store
        .import(&f.archive("n.tar", &members), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::NoManifest { .. }), "{err}");
    f.assert_no_trace();
}

#[test]
fn a_manifest_listing_fewer_layers_than_the_config_is_an_invalid_manifest() {
    let f = fixture();
    let mut members = docker(&two_layers(), "run", &["a"], false);
    let (file, manifest) = members.pop().unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    manifest[0]["Layers"].as_array_mut().unwrap().pop();
    members.push((file, serde_json::to_vec(&manifest).unwrap()));
    let err = f
        .store
        .import(&f.archive("m.tar", &members), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::InvalidManifest {
                problem: ManifestProblem::LayerCountMismatch {
                    diff_ids: 2,
                    layers: 1,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("rootfs.diff_ids lists 2 layers but manifest.json lists 1"),
        "{err}"
    );
    f.assert_no_trace();
}

#[test]
fn a_missing_blob_is_reported_by_name() {
    let f = fixture();
    let mut members = oci(&two_layers(), "run", None, true);
    members.remove(2); // the first layer blob (after oci-layout and config)
    let err = f
        .store
        .import(&f.archive("m.tar", &members), None)
        .unwrap_err();
    assert!(
        matches!(err, ImageError::MissingBlob { ref blob, .. } if blob.starts_with("blobs/sha256/")),
        "{err}"
    );
    f.assert_no_trace();
}

#[test]
fn an_invalid_name_is_rejected_before_any_work() {
    let f = fixture();
    let path = f.archive("a.tar", &oci(&two_layers(), "run", None, true));
    let err = f.store.import(&path, Some("Bad Name")).unwrap_err();
    assert!(matches!(err, ImageError::InvalidName { .. }), "{err}");
    f.assert_no_trace();
}

#[test]
fn invalid_names_inside_an_archive_are_skipped() {
    let f = fixture();
    let members = docker(&two_layers(), "run", &["UPPER:case", "fine:1"], true);
    let image = f.store.import(&f.archive("a.tar", &members), None).unwrap();
    assert_eq!(image.names, ["fine:1"]);
}

#[test]
fn open_removes_leftovers_of_interrupted_imports() {
    let f = fixture();
    let leftover = f.store.tmp_dir().join("import-1-2-3");
    fs::create_dir_all(leftover.join("rootfs/etc")).unwrap();
    fs::write(leftover.join("image.json"), b"{}").unwrap();
    let store = ImageStore::open(f.store.root()).unwrap();
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn an_image_dir_without_metadata_is_not_listed_and_is_replaced_on_import() {
    let f = fixture();
    let layers = two_layers();
    let id = digest::sha256_hex(&config(&layers, "run"));
    let half = f.store.images_dir().join(&id);
    fs::create_dir_all(half.join("rootfs/junk")).unwrap();
    assert!(f.store.list().unwrap().is_empty());
    assert!(matches!(
        f.store.get(&id),
        Err(ImageError::UnknownReference { .. })
    ));
    let image = f
        .store
        .import(&f.archive("a.tar", &oci(&layers, "run", None, true)), None)
        .unwrap();
    assert_eq!(image.id, id);
    assert!(!image.rootfs.join("junk").exists());
    assert_two_layer_rootfs(&image.rootfs);
}

#[test]
fn a_nested_index_is_followed_to_the_host_platform() {
    let f = fixture();
    let mut members = oci(&two_layers(), "run", None, true);
    // Turn index.json's single entry into a nested index with an attestation-like decoy
    // first and the real manifest for this platform second.
    let (_, index) = members.pop().unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let real = index["manifests"][0].clone();
    let decoy = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 2,
        "platform": {"architecture": "unknown", "os": "unknown"},
    });
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [decoy, real],
    }))
    .unwrap();
    let nested_digest = digest::sha256_hex(&nested);
    let nested_size = nested.len();
    members.push((format!("blobs/sha256/{nested_digest}"), nested));
    let top = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{nested_digest}"),
            "size": nested_size,
            "annotations": {"io.containerd.image.name": "docker.io/library/app:3"},
        }],
    }))
    .unwrap();
    members.push(("index.json".to_string(), top));
    let image = f.store.import(&f.archive("n.tar", &members), None).unwrap();
    // Stored in Docker's familiar form, as `berth pull` names it.
    assert_eq!(image.names, ["app:3"]);
    assert_two_layer_rootfs(&image.rootfs);
}

#[test]
fn unpacked_images_are_out_of_reach_of_other_host_users() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    for dir in [f.store.images_dir(), f.store.tmp_dir()] {
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", dir.display());
    }
}

#[test]
fn metadata_survives_reopening_the_store() {
    let f = fixture();
    let image = f
        .store
        .import(
            &f.archive("a.tar", &oci(&two_layers(), "run", Some("a"), true)),
            None,
        )
        .unwrap();
    let reopened = ImageStore::open(f.store.root()).unwrap();
    assert_eq!(reopened.list().unwrap(), [image]);
}
