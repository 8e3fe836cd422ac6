//! The on-disk store: import (scratch dir -> verified unpack -> atomic rename), lookups, names
//! and removal. See the module header of `image` for the layout.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufReader, Write},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::{
    Image, ImageConfig, ImageError,
    archive::{Archive, ImportPlan, Section},
    compression::LayerStream,
    digest::{self, HashingReader},
    is_hex, layer, normalize_name, resolve_reference,
};

const IMAGES_DIR: &str = "images";
const TMP_DIR: &str = "tmp";
const NAMES_FILE: &str = "names.json";
const STORE_LOCK: &str = "lock";
const NAMES_LOCK: &str = "names.lock";
const RECORD_FILE: &str = "image.json";
const ROOTFS_DIR: &str = "rootfs";

/// A local image store rooted at a directory, e.g. /var/lib/berth/images.
///
/// Several processes may share one store: imports and removals hold a shared lock on `lock`
/// while they use `tmp/`, and `open` only clears `tmp/` when it can take that lock exclusively;
/// `names.json` is rewritten under an exclusive lock on `names.lock`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// What `images/<id>/image.json` holds. Names live in `names.json`, the rootfs path is derived.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    id: String,
    config: ImageConfig,
    size_bytes: u64,
    imported_at: u64,
    /// Hex sha256 of each uncompressed layer, bottom first.
    diff_ids: Vec<String>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` and removes what interrupted imports and
    /// removals left in `tmp/`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let store = Self {
            root: root.to_path_buf(),
        };
        for dir in [store.root.clone(), store.images_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        // Root filesystems hold setuid binaries owned by root: host users must not reach them.
        set_mode(&store.images_dir(), 0o700)?;
        set_mode(&store.tmp_dir(), 0o700)?;
        let lock_path = store.root.join(STORE_LOCK);
        match Lock::take(&lock_path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(_guard) => {
                let tmp = store.tmp_dir();
                for entry in fs::read_dir(&tmp).map_err(|source| ImageError::Io {
                    path: tmp.clone(),
                    source,
                })? {
                    let path = match entry {
                        Ok(entry) => entry.path(),
                        Err(source) => {
                            return Err(ImageError::Io {
                                path: tmp.clone(),
                                source,
                            });
                        }
                    };
                    info!(path = %path.display(), "removing leftover of an interrupted import");
                    remove_path(&path)?;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                debug!(store = %root.display(), "another process is importing; leaving tmp/ alone");
            }
            Err(source) => {
                return Err(ImageError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports an image archive (`docker save` output or an OCI layout tar, plain or gzip) and
    /// returns the image. The names found in the archive and `name` (if given) all point at it
    /// afterwards, moving away from images that had them. Importing an image whose id is
    /// already stored reuses its rootfs and only updates names.
    pub fn import(&self, archive: &Path, name: Option<&str>) -> Result<Image, ImageError> {
        let extra_name = name.map(normalize_name).transpose()?;
        let _shared = self.lock_store(libc::LOCK_SH)?;
        let scratch = Scratch::create(&self.tmp_dir(), "import")?;
        let archive = Archive::open(archive, &scratch.path)?;
        let plan = archive.plan()?;
        let final_dir = self.image_dir(&plan.id);

        if final_dir.join(RECORD_FILE).exists() {
            info!(id = %plan.id, "image already stored; reusing its rootfs");
        } else {
            self.unpack(&archive, &plan, &scratch.path)?;
            if final_dir.exists() {
                // Not an image (no record): nothing berth writes looks like this; clear it.
                warn!(path = %final_dir.display(), "replacing an incomplete image directory");
                remove_path(&final_dir)?;
            }
            match fs::rename(&scratch.path, &final_dir) {
                Ok(()) => {}
                // Another import of the same image won the race: use its result.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY))
                        && final_dir.join(RECORD_FILE).exists() => {}
                Err(source) => {
                    return Err(ImageError::Io {
                        path: final_dir,
                        source,
                    });
                }
            }
            sync_dir(&self.images_dir())?;
            info!(id = %plan.id, archive = %archive.path().display(), "image imported");
        }
        drop(scratch);

        let mut names = plan.names.clone();
        if let Some(extra) = extra_name
            && !names.contains(&extra)
        {
            names.push(extra);
        }
        if !names.is_empty() {
            self.update_names(|map| {
                for name in &names {
                    if let Some(old) = map.insert(name.clone(), plan.id.clone())
                        && old != plan.id
                    {
                        info!(%name, from = %old, to = %plan.id, "name moved to the new image");
                    }
                }
            })?;
        }
        self.get(&plan.id)
    }

    /// Unpacks all layers into `<scratch>/rootfs` and writes `<scratch>/image.json`.
    fn unpack(
        &self,
        archive: &Archive,
        plan: &ImportPlan,
        scratch: &Path,
    ) -> Result<(), ImageError> {
        let rootfs = scratch.join(ROOTFS_DIR);
        fs::create_dir(&rootfs).map_err(|source| ImageError::Io {
            path: rootfs.clone(),
            source,
        })?;
        set_mode(&rootfs, 0o755)?;
        for (i, source) in plan.layers.iter().enumerate() {
            debug!(layer = %source.member, index = i, "applying layer");
            if let Some(digest) = &source.digest {
                archive.verify(&source.member, digest, source.size)?;
            }
            let (section, _) = archive.open_member(&source.member)?;
            let diff_id = apply_layer(&rootfs, &source.member, section)?;
            archive.check_digest(
                &format!("{} (uncompressed, rootfs.diff_ids[{i}])", source.member),
                &source.diff_id,
                &diff_id,
            )?;
        }
        // The archive copy, if any, is not part of the image.
        let _ = fs::remove_file(scratch.join("archive.tar"));
        let record = ImageRecord {
            id: plan.id.clone(),
            config: plan.config.clone(),
            size_bytes: layer::disk_usage(&rootfs)?,
            imported_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            diff_ids: plan.layers.iter().map(|l| l.diff_id.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|source| ImageError::Metadata {
            path: scratch.join(RECORD_FILE),
            source,
        })?;
        write_atomic(&scratch.join(RECORD_FILE), &json)?;
        // One syncfs for the whole rootfs instead of an fsync per file: after the rename below
        // the image is visible, so its content must be on disk first.
        syncfs(scratch)?;
        Ok(())
    }

    /// All images, oldest import first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let names = self.read_names()?;
        let mut images = Vec::new();
        for id in self.ids()? {
            match self.load(&id, &names) {
                Ok(image) => images.push(image),
                Err(e) => warn!(%id, error = %e, "skipping unreadable image"),
            }
        }
        images.sort_by(|a, b| (a.imported_at, &a.id).cmp(&(b.imported_at, &b.id)));
        Ok(images)
    }

    /// Finds an image by name (`name:tag`, `:latest` implied), full id (optionally
    /// `sha256:`-prefixed) or unique id prefix of at least 6 hex characters.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let names = self.read_names()?;
        let ids = self.ids()?;
        let id = resolve_reference(reference, &ids, &names)?;
        self.load(id, &names)
    }

    /// Removes an image, its rootfs and every name pointing at it, and returns what it was.
    /// The caller checks that no container uses it.
    pub fn remove(&self, reference: &str) -> Result<Image, ImageError> {
        let image = self.get(reference)?;
        let _shared = self.lock_store(libc::LOCK_SH)?;
        let trash = Scratch::reserve(&self.tmp_dir(), "remove");
        let dir = self.image_dir(&image.id);
        fs::rename(&dir, &trash.path).map_err(|source| ImageError::Io { path: dir, source })?;
        sync_dir(&self.images_dir())?;
        self.update_names(|map| map.retain(|_, id| *id != image.id))?;
        drop(trash);
        info!(id = %image.id, names = ?image.names, "image removed");
        Ok(image)
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join(IMAGES_DIR)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn image_dir(&self, id: &str) -> PathBuf {
        self.images_dir().join(id)
    }

    fn lock_store(&self, how: libc::c_int) -> Result<Lock, ImageError> {
        let path = self.root.join(STORE_LOCK);
        Lock::take(&path, how).map_err(|source| ImageError::Io { path, source })
    }

    /// Ids of complete images: directories in `images/` named by an id, with a record.
    fn ids(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.images_dir();
        let io_err = |source| ImageError::Io {
            path: dir.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.len() == 64 && is_hex(&name) && entry.path().join(RECORD_FILE).is_file() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn load(&self, id: &str, names: &BTreeMap<String, String>) -> Result<Image, ImageError> {
        let dir = self.image_dir(id);
        let path = dir.join(RECORD_FILE);
        let bytes = fs::read(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        let record: ImageRecord = serde_json::from_slice(&bytes)
            .map_err(|source| ImageError::Metadata { path, source })?;
        Ok(Image {
            names: names
                .iter()
                .filter(|(_, target)| *target == id)
                .map(|(name, _)| name.clone())
                .collect(),
            id: record.id,
            rootfs: dir.join(ROOTFS_DIR),
            config: record.config,
            size_bytes: record.size_bytes,
            imported_at: record.imported_at,
        })
    }

    fn read_names(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.root.join(NAMES_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ImageError::Metadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ImageError::Io { path, source }),
        }
    }

    /// Read-modify-write of `names.json` under the names lock. Names of images that no longer
    /// exist are dropped on the way.
    fn update_names(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<(), ImageError> {
        let lock_path = self.root.join(NAMES_LOCK);
        let _lock = Lock::take(&lock_path, libc::LOCK_EX).map_err(|source| ImageError::Io {
            path: lock_path,
            source,
        })?;
        let mut names = self.read_names()?;
        change(&mut names);
        let ids = self.ids()?;
        names.retain(|_, id| ids.binary_search(id).is_ok());
        let path = self.root.join(NAMES_FILE);
        let json = serde_json::to_vec_pretty(&names).map_err(|source| ImageError::Metadata {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)
    }
}

/// Applies one layer blob (compressed or not) and returns the sha256 of its uncompressed tar.
fn apply_layer(rootfs: &Path, member: &str, section: Section<'_>) -> Result<String, ImageError> {
    let read_err = |source| ImageError::LayerRead {
        layer: member.to_string(),
        source,
    };
    let mut hasher = Sha256::new();
    {
        let mut stream = HashingReader::new(
            LayerStream::new(BufReader::with_capacity(1 << 16, section), member)?,
            &mut hasher,
        );
        layer::apply(rootfs, member, &mut stream)?;
        // The diff id covers the whole tar, including the end-of-archive blocks and padding
        // the tar reader stopped before; draining also completes the gzip CRC check.
        io::copy(&mut stream, &mut io::sink()).map_err(read_err)?;
    }
    Ok(digest::hex(hasher))
}

/// An exclusive scratch directory under `tmp/`, removed when dropped unless renamed away.
struct Scratch {
    path: PathBuf,
}

static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

impl Scratch {
    /// A fresh, unique path under `tmp/` (not created).
    fn reserve(tmp: &Path, what: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seq = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        Self {
            path: tmp.join(format!("{what}-{}-{nanos}-{seq}", std::process::id())),
        }
    }

    fn create(tmp: &Path, what: &str) -> Result<Self, ImageError> {
        let scratch = Self::reserve(tmp, what);
        fs::create_dir(&scratch.path).map_err(|source| ImageError::Io {
            path: scratch.path.clone(),
            source,
        })?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.path) {
            warn!(error = %e, "cannot remove scratch directory; the next open removes it");
        }
    }
}

/// An flock(2) held until dropped.
struct Lock {
    _file: File,
}

impl Lock {
    fn take(path: &Path, how: libc::c_int) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(Self { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn remove_path(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` via a temp file in the same directory: write, fsync, rename,
/// fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let io_err = |p: &Path, source| ImageError::Io {
        path: p.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ImageError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn syncfs(path: &Path) -> Result<(), ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = File::open(path).map_err(io_err)?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{Entry::*, Members, docker, gzip, layer, oci, pack};

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
        let expected = digest::sha256_hex(&crate::image::testutil::config(&layers, "run"));
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
        members[0].1 = crate::image::testutil::config(&two_layers(), "other");
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
        let id = digest::sha256_hex(&crate::image::testutil::config(&layers, "run"));
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
        assert_eq!(image.names, ["docker.io/library/app:3"]);
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
}
