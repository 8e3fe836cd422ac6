//! Struct field offsets and function ids from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs have no CO-RE relocations, so the offsets of the kernel fields they read
//! are looked up here at start-up and handed to them as load-time globals. aya 0.14 parses BTF
//! but keeps the type and member accessors crate-private, hence this small reader of the
//! format documented at <https://docs.kernel.org/bpf/btf.html> (type section: a 12-byte
//! `struct btf_type` per type followed by kind-specific data; ids start at 1 in file order).

use std::{borrow::Cow, path::Path};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF {path}: {reason} (is CONFIG_DEBUG_INFO_BTF enabled?)")]
    Read { path: String, reason: String },
    #[error("kernel BTF is malformed: {what}")]
    Malformed { what: &'static str },
    #[error("kernel BTF has no {kind} named {name}")]
    NoType { kind: &'static str, name: String },
    #[error("kernel BTF: struct {ty} has no field {field}")]
    NoField { ty: String, field: String },
    #[error("kernel BTF: {ty}.{field} is a bitfield or not byte-aligned")]
    Bitfield { ty: String, field: String },
    #[error("kernel BTF: {ty}.{field} is not a struct or union, cannot look inside it")]
    NotAggregate { ty: String, field: String },
}

/// `BTF_KIND_*` values used here (include/uapi/linux/btf.h).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

const MAGIC: u16 = 0xeb9f;
const TYPE_HEADER: usize = 12;

/// A field found by [`Btf::field`]: byte offset from the start of the outer struct and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parsed BTF: the raw bytes plus the position of every type.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte position of type id `i` in `data` at index `i` (index 0, the void type, unused).
    types: Vec<usize>,
}

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Position of the kind-specific data.
    extra: usize,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(data)
    }

    /// Parses a little-endian BTF blob (header, types, strings).
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = |what| BtfError::Malformed { what };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(bad("no little-endian BTF header"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let hdr_len = u32_at(4) as usize;
        let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
        let (str_off, str_len) = (u32_at(16) as usize, u32_at(20) as usize);
        let types_range = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_range.end > data.len() || strings.end > data.len() {
            return Err(bad("sections beyond the end of the data"));
        }
        let mut types = vec![0];
        let mut at = types_range.start;
        while at < types_range.end {
            if at + TYPE_HEADER > types_range.end {
                return Err(bad("truncated type"));
            }
            types.push(at);
            let info = u32_at(at + 4);
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                _ => return Err(bad("unknown type kind")),
            };
            at += TYPE_HEADER + extra;
        }
        if at != types_range.end {
            return Err(bad("type section does not end on a type"));
        }
        Ok(Self {
            data,
            strings,
            types,
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().unwrap())
    }

    fn ty(&self, id: u32) -> Option<Type> {
        let at = *self.types.get(id as usize).filter(|_| id != 0)?;
        let info = self.u32_at(at + 4);
        Some(Type {
            name_off: self.u32_at(at),
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            size_or_type: self.u32_at(at + 8),
            extra: at + TYPE_HEADER,
        })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let start = self.strings.start + off as usize;
        if start >= self.strings.end {
            return Cow::Borrowed("");
        }
        let bytes = &self.data[start..self.strings.end];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end])
    }

    /// Id of the first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.types.len() as u32).find(|&id| {
            self.ty(id)
                .is_some_and(|t| t.kind == kind && self.name(t.name_off) == name)
        })
    }

    /// BTF id of the kernel function `name` (`BTF_KIND_FUNC`), as fentry's `attach_btf_id`.
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find(kind::FUNC, name).ok_or_else(|| BtfError::NoType {
            kind: "function",
            name: name.to_owned(),
        })
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<(u32, Type)> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some((id, t)),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let (_, t) = self.resolve(id)?;
        match t.kind {
            kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 => {
                Some(t.size_or_type)
            }
            kind::PTR => Some(8),
            kind::ARRAY => {
                let elem = self.u32_at(t.extra);
                let n = self.u32_at(t.extra + 8);
                self.size_of(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }

    /// Finds member `name` of the struct/union `id`, looking through anonymous members.
    /// Returns (bit offset from the start of `id`, member type id).
    fn member(&self, id: u32, name: &str) -> Option<Result<(u32, u32), ()>> {
        let t = self.ty(id)?;
        for i in 0..t.vlen {
            let at = t.extra + 12 * i;
            let (m_name, m_type, m_off) =
                (self.u32_at(at), self.u32_at(at + 4), self.u32_at(at + 8));
            // With kind_flag, the high 8 bits are the bitfield size.
            let (bits, bitfield) = if t.kind_flag {
                (m_off & 0x00ff_ffff, m_off >> 24 != 0)
            } else {
                (m_off, false)
            };
            if m_name == 0 {
                let Some((inner, it)) = self.resolve(m_type) else {
                    continue;
                };
                if matches!(it.kind, kind::STRUCT | kind::UNION)
                    && let Some(found) = self.member(inner, name)
                {
                    return Some(found.map(|(off, ty)| (bits + off, ty)));
                }
            } else if self.name(m_name) == name {
                return Some(if bitfield {
                    Err(())
                } else {
                    Ok((bits, m_type))
                });
            }
        }
        None
    }

    /// Offset and size of `path` inside `struct ty`: `field("sk_buff", &["len"])`, or a nested
    /// one, `field("nf_conn", &["tuplehash", "tuple", "dst", "u", "all"])`. Arrays are stepped
    /// into at element 0.
    pub fn field(&self, ty: &str, path: &[&str]) -> Result<Field, BtfError> {
        let mut id = self
            .find(kind::STRUCT, ty)
            .ok_or_else(|| BtfError::NoType {
                kind: "struct",
                name: ty.to_owned(),
            })?;
        let mut bits = 0u32;
        let mut walked = ty.to_owned();
        for (i, &name) in path.iter().enumerate() {
            let (aggregate, _) = self
                .resolve(id)
                .filter(|(_, t)| matches!(t.kind, kind::STRUCT | kind::UNION))
                .ok_or_else(|| BtfError::NotAggregate {
                    ty: ty.to_owned(),
                    field: path[..i].join("."),
                })?;
            let (off, m_type) = match self.member(aggregate, name) {
                Some(Ok(found)) => found,
                Some(Err(())) => {
                    return Err(BtfError::Bitfield {
                        ty: ty.to_owned(),
                        field: path[..=i].join("."),
                    });
                }
                None => {
                    return Err(BtfError::NoField {
                        ty: walked,
                        field: name.to_owned(),
                    });
                }
            };
            bits += off;
            walked = format!("{walked}.{name}");
            id = m_type;
            // Step into arrays at element 0.
            while let Some((_, t)) = self.resolve(id).filter(|(_, t)| t.kind == kind::ARRAY) {
                id = self.u32_at(t.extra);
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                ty: ty.to_owned(),
                field: path.join("."),
            });
        }
        let size = self.size_of(id).ok_or(BtfError::Malformed {
            what: "field of unknown size",
        })?;
        Ok(Field {
            offset: bits / 8,
            size,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a little-endian BTF blob from (name, info, size_or_type, extra u32s) entries.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        pub(crate) fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        pub(crate) fn add(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            size_or_type: u32,
            extra: &[u32],
        ) {
            let name = self.string(name);
            for v in [name, (kind << 24) | vlen, size_or_type]
                .iter()
                .chain(extra)
            {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }

        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// 1 u8, 2 u16, 3 u64, 4 ptr to u8, 5 anon struct {u16 network_header @0},
    /// 6 sk_buff {ptr head @0; anon(5) @64 bits; u64 _nfct @128 bits; arr(7) pad @192}, 7 u16[3],
    /// 8 func nf_hook_slow, 9 typedef u8 u_int8_t.
    fn sample() -> Btf {
        let mut b = Builder::new();
        b.add("u8", kind::INT, 0, 1, &[8]);
        b.add("u16", kind::INT, 0, 2, &[16]);
        b.add("u64", kind::INT, 0, 8, &[64]);
        b.add("", kind::PTR, 0, 1, &[]);
        let nh = b.string("network_header");
        b.add("", kind::STRUCT, 1, 2, &[nh, 2, 0]);
        let (head, nfct, pad) = (b.string("head"), b.string("_nfct"), b.string("pad"));
        b.add(
            "sk_buff",
            kind::STRUCT,
            4,
            30,
            &[head, 4, 0, 0, 5, 64, nfct, 3, 128, pad, 7, 192],
        );
        b.add("", kind::ARRAY, 0, 0, &[2, 2, 3]);
        b.add("nf_hook_slow", kind::FUNC, 0, 0, &[]);
        b.add("u_int8_t", kind::TYPEDEF, 0, 1, &[]);
        Btf::parse(b.build()).unwrap()
    }

    #[test]
    fn fields_are_found_directly_and_through_anonymous_members() {
        let btf = sample();
        assert_eq!(
            btf.field("sk_buff", &["head"]).unwrap(),
            Field { offset: 0, size: 8 }
        );
        assert_eq!(
            btf.field("sk_buff", &["network_header"]).unwrap(),
            Field { offset: 8, size: 2 }
        );
        assert_eq!(
            btf.field("sk_buff", &["_nfct"]).unwrap(),
            Field {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.field("sk_buff", &["pad"]).unwrap(),
            Field {
                offset: 24,
                size: 2
            }
        );
    }

    #[test]
    fn missing_structs_and_fields_are_named_in_the_error() {
        let btf = sample();
        assert_eq!(
            btf.field("nf_conn", &["x"]).unwrap_err().to_string(),
            "kernel BTF has no struct named nf_conn"
        );
        assert_eq!(
            btf.field("sk_buff", &["len"]).unwrap_err().to_string(),
            "kernel BTF: struct sk_buff has no field len"
        );
        assert!(matches!(
            btf.field("sk_buff", &["head", "x"]),
            Err(BtfError::NotAggregate { .. })
        ));
    }

    #[test]
    fn functions_have_their_type_ids() {
        assert_eq!(sample().func_id("nf_hook_slow").unwrap(), 8);
        assert!(sample().func_id("nope").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Btf::parse(vec![0; 64]).is_err());
        let mut blob = Builder::new().build();
        blob[8] = 200; // type_off beyond the end
        assert!(Btf::parse(blob).is_err());
    }

    #[test]
    fn the_running_kernel_has_the_fields_the_netfilter_probe_reads() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no {VMLINUX}: skipped");
            return;
        };
        let len = btf.field("sk_buff", &["len"]).unwrap();
        assert_eq!(len.size, 4);
        assert_eq!(btf.field("nf_hook_state", &["hook"]).unwrap().size, 1);
        assert_eq!(btf.field("sk_buff", &["network_header"]).unwrap().size, 2);
        let dport = btf
            .field("nf_conn", &["tuplehash", "tuple", "dst", "u", "all"])
            .unwrap();
        assert_eq!(dport.size, 2);
        assert!(btf.func_id("nf_hook_slow").unwrap() > 0);
    }
}
