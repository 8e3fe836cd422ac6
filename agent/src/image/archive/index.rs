//! The tar index of an image archive: the archive is read once (decompressed into the import's
//! scratch directory first when it is gzip) and every member is recorded as an offset and size,
//! or as a link to another member. Blobs are then read in place, in any order and several at
//! once (pread), which both formats need: their metadata names blobs in an order unrelated to
//! the tar's.
//!
//! Member names are normalized and never contain `..`; links between members are resolved
//! inside the archive, with a bounded number of hops.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};
use tracing::debug;

use crate::image::{
    ImageError,
    compression::{Compression, sniff},
    digest,
};

/// Largest JSON document (manifest, index, config) read into memory.
const JSON_LIMIT: u64 = 16 << 20;
/// Most links followed when a member is a symlink or hard link to another member.
const MAX_LINK_HOPS: usize = 16;

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
pub(super) fn member_key(name: &[u8]) -> Option<String> {
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

/// Whether `file` lives on procfs or sysfs (regular files there are kernel interfaces).
fn on_pseudo_fs(file: &File) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fstatfs fills the zeroed struct for a valid fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(
        st.f_type,
        libc::PROC_SUPER_MAGIC | libc::SYSFS_MAGIC | libc::DEBUGFS_MAGIC
    )
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
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Err(ImageError::NotTar {
                path: path.to_path_buf(),
                source: io::Error::other("it is a directory"),
            });
        }
        if !meta.is_file() || on_pseudo_fs(&file) {
            // Devices, FIFOs, sockets, /proc and /sys files: never an archive, and reading
            // them may block, never end, or fail with EIO (/proc/self/mem).
            return Err(ImageError::NotRegularFile {
                path: path.to_path_buf(),
            });
        }
        let mut head = [0u8; 8];
        // A file the caller named that cannot be read is the caller's problem to fix.
        let n = file
            .read_at(&mut head, 0)
            .map_err(|source| ImageError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?;
        let file = match sniff(&head[..n]) {
            Compression::None => file,
            // A whole archive in zstd is not something docker or skopeo write; layers may be.
            Compression::Zstd | Compression::Unsupported(_) => {
                let format = match sniff(&head[..n]) {
                    Compression::Unsupported(format) => format,
                    _ => "zstd",
                };
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
    pub(super) fn read_json_member(&self, name: &str) -> Result<Vec<u8>, ImageError> {
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
        self.check_digest(name, expected, &digest::hex(hasher))
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
}
