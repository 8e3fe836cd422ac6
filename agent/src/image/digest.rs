//! sha256 digests as the image formats spell them (64 lowercase hex characters): of a byte
//! slice, of a finished hasher, and of a stream as it passes through a reader, so a layer is
//! hashed (for its `rootfs.diff_ids` entry) while it is being unpacked, in one pass.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// Lowercase hex of a finished sha256.
pub(crate) fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lowercase hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hex(hasher)
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
