//! Compression told by content, not by file name: the first bytes of an image archive or of a
//! layer blob say whether it is plain tar, gzip or zstd (which berth reads: registries serve
//! both) or a format berth refuses with a clear message (xz, bzip2). [`LayerStream`] undoes the
//! compression of a layer as it is read,
//! so a layer is never decompressed to disk.

use std::io::{self, BufRead, Read};

use flate2::read::MultiGzDecoder;

use super::ImageError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Compression recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    Unsupported(&'static str),
}

/// Tells the compression of a stream from its first bytes.
pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Unsupported("xz")
    } else if head.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else {
        Compression::None
    }
}

/// A layer stream, decompressed according to its first bytes.
pub(crate) enum LayerStream<R: BufRead> {
    Plain(R),
    Gzip(MultiGzDecoder<R>),
    Zstd(Box<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>),
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
            Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(inner)
                .map(|d| Self::Zstd(Box::new(d)))
                .map_err(|e| ImageError::LayerRead {
                    layer: layer.to_string(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                }),
            Compression::Unsupported(format) => Err(ImageError::UnsupportedLayerCompression {
                layer: layer.to_string(),
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
            Self::Zstd(r) => r.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_told_by_magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/passwd\0"), Compression::None);
        assert_eq!(sniff(&[]), Compression::None);
    }
}
