//! Just enough of a BTF reader to find struct member offsets and enum values
//! in the running kernel (`/sys/kernel/btf/vmlinux`, and module BTF split on
//! top of it). The format is documented in the kernel's
//! Documentation/bpf/btf.rst.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, bail};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        name: String,
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        name: String,
        values: Vec<(String, i64)>,
    },
    /// typedef, const, volatile, restrict, type tag: look through.
    Alias {
        type_id: u32,
    },
    /// Functions, pointers, forward declarations, floats. `type_id` is a
    /// function's prototype or a pointer's target.
    Named {
        kind: u32,
        name: String,
        type_id: u32,
    },
    /// A function prototype's parameters: (name, type id).
    Proto {
        params: Vec<(String, u32)>,
    },
    Other,
}

/// Parsed type information of one BTF blob (or a base plus split modules).
#[derive(Debug, Default)]
pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
    /// String section of the first (base) blob; split blobs refer into it.
    base_strings: Vec<u8>,
    /// Number of type ids of the base (vmlinux, with `void`). Every module's
    /// split BTF numbers its own types from here, so a second module's ids
    /// are moved to where its types are stored.
    base_types: u32,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16> {
    let b = data.get(at..at + 2).context("BTF data is truncated")?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let b = data.get(at..at + 4).context("BTF data is truncated")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    /// The running kernel's BTF: vmlinux, plus the named modules' split BTF
    /// where present (e.g. `fuse` when FUSE is a module).
    pub fn from_running_kernel(modules: &[&str]) -> Result<Btf> {
        let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
        let data = std::fs::read(vmlinux).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {} ({e}): this kernel has no BTF; fusetrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
                vmlinux.display()
            )
        })?;
        let mut btf = Btf::default();
        btf.types.push(Type::Other);
        btf.add_blob(&data)
            .with_context(|| format!("parsing {}", vmlinux.display()))?;
        for module in modules {
            let path = Path::new("/sys/kernel/btf").join(module);
            if let Ok(data) = std::fs::read(&path) {
                btf.add_blob(&data)
                    .with_context(|| format!("parsing {}", path.display()))?;
            }
        }
        Ok(btf)
    }

    /// Parses one standalone BTF blob.
    pub fn parse(data: &[u8]) -> Result<Btf> {
        let mut btf = Btf::default();
        btf.types.push(Type::Other);
        btf.add_blob(data)?;
        Ok(btf)
    }

    /// Adds a blob whose type ids and string offsets continue after the
    /// base's (split BTF, as in `/sys/kernel/btf/<module>`).
    fn add_blob(&mut self, data: &[u8]) -> Result<()> {
        if u16_at(data, 0)? != MAGIC {
            bail!("not BTF data (bad magic)");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("BTF type section out of bounds")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section out of bounds")?;
        // A split blob's string offsets count on from its base's strings.
        let base: &[u8] = &self.base_strings;
        let name = |off: u32| -> String {
            let off = off as usize;
            let (table, local) = if off < base.len() {
                (base, off)
            } else {
                (strings, off - base.len())
            };
            table
                .get(local..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default()
        };
        let mut new_types = Vec::new();
        let mut new_names: Vec<(String, u32)> = Vec::new();
        let first_id = self.types.len() as u32;
        let base_types = self.base_types;
        let remap = |id: u32| {
            if base_types == 0 || id < base_types {
                id
            } else {
                id - base_types + first_id
            }
        };
        let mut at = 0usize;
        while at + 12 <= types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT => {
                    at += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    at += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = u32_at(types, at)?;
                        let m_type = u32_at(types, at + 4)?;
                        let m_off = u32_at(types, at + 8)?;
                        at += 12;
                        let bit_offset = if kind_flag {
                            m_off & 0x00ff_ffff
                        } else {
                            m_off
                        };
                        members.push(Member {
                            name: name(m_name),
                            type_id: remap(m_type),
                            bit_offset,
                        });
                    }
                    Type::Composite {
                        name: name(name_off),
                        size: size_or_type,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let v_name = u32_at(types, at)?;
                        let v = u32_at(types, at + 4)? as i32 as i64;
                        at += 8;
                        values.push((name(v_name), v));
                    }
                    Type::Enum {
                        name: name(name_off),
                        values,
                    }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let v_name = u32_at(types, at)?;
                        let lo = u32_at(types, at + 4)? as u64;
                        let hi = u32_at(types, at + 8)? as u64;
                        at += 12;
                        values.push((name(v_name), (hi << 32 | lo) as i64));
                    }
                    Type::Enum {
                        name: name(name_off),
                        values,
                    }
                }
                KIND_FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let p_name = u32_at(types, at)?;
                        let p_type = u32_at(types, at + 4)?;
                        at += 8;
                        params.push((name(p_name), remap(p_type)));
                    }
                    Type::Proto { params }
                }
                KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    if kind == KIND_TYPEDEF {
                        let n = name(name_off);
                        if !n.is_empty() {
                            new_names.push((n, first_id + new_types.len() as u32));
                        }
                    }
                    Type::Alias {
                        type_id: remap(size_or_type),
                    }
                }
                KIND_FUNC | KIND_FWD | KIND_PTR | KIND_FLOAT => Type::Named {
                    kind,
                    name: name(name_off),
                    type_id: remap(size_or_type),
                },
                other => bail!("unknown BTF kind {other}"),
            };
            let id = first_id + new_types.len() as u32;
            match &ty {
                Type::Composite { name, .. }
                | Type::Enum { name, .. }
                | Type::Named { name, .. }
                    if !name.is_empty() =>
                {
                    new_names.push((name.clone(), id));
                }
                _ => {}
            }
            new_types.push(ty);
        }
        self.types.extend(new_types);
        for (n, id) in new_names {
            self.by_name.entry(n).or_default().push(id);
        }
        if self.base_strings.is_empty() {
            self.base_strings = strings.to_vec();
            self.base_types = self.types.len() as u32;
        }
        Ok(())
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias { type_id } => id = *type_id,
                other => return Some(other),
            }
        }
        None
    }

    fn composite(&self, name: &str) -> Option<(u32, &[Member])> {
        self.by_name
            .get(name)?
            .iter()
            .find_map(|&id| match &self.types[id as usize] {
                // Skip forward declarations and empty shells.
                Type::Composite { size, members, .. } if !members.is_empty() => {
                    Some((*size, members.as_slice()))
                }
                _ => None,
            })
    }

    /// Finds `member` in a struct's members, looking inside anonymous
    /// structs and unions; returns its bit offset and type.
    fn find_member(&self, members: &[Member], member: &str) -> Option<(u32, u32)> {
        for m in members {
            if m.name == member {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name.is_empty()
                && let Some(Type::Composite { members: inner, .. }) = self.resolve(m.type_id)
                && let Some((off, ty)) = self.find_member(inner, member)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// Bit offset of a dotted member path (bitfields included).
    pub fn bit_offset_of(&self, strukt: &str, path: &str) -> Result<u32> {
        let mut members = self
            .composite(strukt)
            .map(|(_, m)| m)
            .with_context(|| format!("struct {strukt} is not in the kernel's BTF"))?;
        let mut total = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, ty) = self.find_member(members, part).with_context(|| {
                format!("struct {strukt} has no member {path} in the kernel's BTF")
            })?;
            total += off;
            if parts.peek().is_some() {
                members = match self.resolve(ty) {
                    Some(Type::Composite { members, .. }) => members,
                    _ => bail!("{strukt}.{path}: {part} is not a struct"),
                };
            }
        }
        Ok(total)
    }

    /// Byte offset of a dotted member path, e.g. `offset_of("fuse_req", "in.h")`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32> {
        Ok(self.bit_offset_of(strukt, path)? / 8)
    }

    /// `sizeof(struct name)`.
    pub fn size_of(&self, strukt: &str) -> Result<u32> {
        self.composite(strukt)
            .map(|(size, _)| size)
            .with_context(|| format!("struct {strukt} is not in the kernel's BTF"))
    }

    /// Value of an enumerator, e.g. `enum_value("fuse_req_flag", "FR_BACKGROUND")`.
    pub fn enum_value(&self, enum_name: &str, value: &str) -> Result<i64> {
        self.by_name
            .get(enum_name)
            .into_iter()
            .flatten()
            .find_map(|&id| match &self.types[id as usize] {
                Type::Enum { values, .. } => {
                    values.iter().find(|(n, _)| n == value).map(|(_, v)| *v)
                }
                _ => None,
            })
            .with_context(|| format!("enum {enum_name} has no {value} in the kernel's BTF"))
    }

    /// Whether a named type of any kind exists (e.g. `btf_trace_fuse_request_send`).
    pub fn has_type(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether a function of that name is described (candidates for fentry).
    pub fn has_function(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|ids| {
            ids.iter().any(|&id| {
                matches!(
                    self.types[id as usize],
                    Type::Named {
                        kind: KIND_FUNC,
                        ..
                    }
                )
            })
        })
    }

    /// Type id of function `func` (for fentry's `attach_btf_id`).
    pub fn function_id(&self, func: &str) -> Option<u32> {
        self.by_name.get(func)?.iter().copied().find(|&id| {
            matches!(
                self.types[id as usize],
                Type::Named {
                    kind: KIND_FUNC,
                    ..
                }
            )
        })
    }

    /// Index of the first parameter of function `func` that is a pointer
    /// to `struct pointee` (signatures differ between kernel versions).
    pub fn param_pointing_to(&self, func: &str, pointee: &str) -> Option<usize> {
        let params =
            self.by_name
                .get(func)?
                .iter()
                .find_map(|&id| match &self.types[id as usize] {
                    Type::Named {
                        kind: KIND_FUNC,
                        type_id,
                        ..
                    } => match self.resolve(*type_id)? {
                        Type::Proto { params } => Some(params),
                        _ => None,
                    },
                    _ => None,
                })?;
        params.iter().position(|(_, ty)| {
            let Some(Type::Named {
                kind: KIND_PTR,
                type_id,
                ..
            }) = self.resolve(*ty)
            else {
                return false;
            };
            matches!(
                self.resolve(*type_id),
                Some(Type::Composite { name, .. } | Type::Named { kind: KIND_FWD, name, .. })
                    if name == pointee
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob by hand: the reader must not depend on the machine.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// Split BTF: string offsets continue after the base's strings.
        str_base: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                str_base: 0,
            }
        }
        /// A module's blob on top of a base whose strings are `base_len` long.
        fn split(base_len: usize) -> Self {
            Builder {
                types: Vec::new(),
                strings: Vec::new(),
                str_base: base_len as u32,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn word(&mut self, w: u32) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        fn int(&mut self, name: &str, size: u32) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_INT << 24);
            self.word(size);
            self.word(size * 8);
        }
        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)], bitfields: bool) {
            let n = self.s(name);
            self.word(n);
            self.word(
                (KIND_STRUCT << 24) | members.len() as u32 | if bitfields { 1 << 31 } else { 0 },
            );
            self.word(size);
            for (m, ty, bits) in members {
                let mn = self.s(m);
                self.word(mn);
                self.word(*ty);
                self.word(*bits);
            }
        }
        fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) {
            let n = self.s(name);
            self.word(n);
            self.word((KIND_ENUM << 24) | values.len() as u32);
            self.word(4);
            for (v, x) in values {
                let vn = self.s(v);
                self.word(vn);
                self.word(*x as u32);
            }
        }
        fn typedef(&mut self, name: &str, ty: u32) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_TYPEDEF << 24);
            self.word(ty);
        }
        fn ptr(&mut self, ty: u32) {
            self.word(0);
            self.word(KIND_PTR << 24);
            self.word(ty);
        }
        fn proto(&mut self, params: &[(&str, u32)]) {
            self.word(0);
            self.word((KIND_FUNC_PROTO << 24) | params.len() as u32);
            self.word(0);
            for (p, ty) in params {
                let pn = self.s(p);
                self.word(pn);
                self.word(*ty);
            }
        }
        fn func(&mut self, name: &str, proto: u32) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_FUNC << 24);
            self.word(proto);
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1);
            out.push(0);
            out.extend_from_slice(&24u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn nested_anonymous_and_typedef_members() {
        let mut b = Builder::new();
        b.int("u32", 4); // 1
        b.strukt(
            "fuse_in_header",
            40,
            &[("len", 1, 0), ("opcode", 1, 32)],
            false,
        ); // 2
        b.strukt("", 40, &[("h", 2, 0)], false); // 3: anonymous `in`
        b.typedef("fuse_hdr_t", 2); // 4
        // 5: fuse_req with `in` at byte 48 and an anonymous union holding `fm` at byte 200
        b.strukt("", 8, &[("fm", 1, 0)], false); // 5
        b.strukt(
            "fuse_req",
            256,
            &[("flags", 1, 256), ("in", 3, 384), ("", 5, 1600)],
            false,
        ); // 6
        b.enumeration("fuse_req_flag", &[("FR_ISREPLY", 0), ("FR_BACKGROUND", 2)]); // 7
        b.strukt("with_typedef", 48, &[("x", 1, 0), ("hdr", 4, 64)], false); // 8
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.offset_of("fuse_req", "flags").unwrap(), 32);
        assert_eq!(btf.offset_of("fuse_req", "in.h").unwrap(), 48);
        assert_eq!(btf.offset_of("fuse_req", "in.h.opcode").unwrap(), 52);
        assert_eq!(btf.offset_of("fuse_req", "fm").unwrap(), 200);
        assert_eq!(btf.offset_of("with_typedef", "hdr.opcode").unwrap(), 12);
        assert_eq!(btf.enum_value("fuse_req_flag", "FR_BACKGROUND").unwrap(), 2);
        assert!(
            btf.offset_of("fuse_req", "nope")
                .unwrap_err()
                .to_string()
                .contains("no member nope")
        );
        assert!(
            btf.offset_of("absent", "x")
                .unwrap_err()
                .to_string()
                .contains("not in the kernel's BTF")
        );
        assert!(btf.has_type("fuse_hdr_t"));
    }

    #[test]
    fn bitfield_offsets_use_low_24_bits() {
        let mut b = Builder::new();
        b.int("unsigned int", 4);
        // kind_flag set: offset word = bitfield_size << 24 | bit_offset
        b.strukt(
            "fuse_conn",
            16,
            &[("a", 1, (1 << 24) | 3), ("dev", 1, 64)],
            true,
        );
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(btf.offset_of("fuse_conn", "dev").unwrap(), 8);
        assert_eq!(btf.bit_offset_of("fuse_conn", "a").unwrap(), 3);
        assert_eq!(btf.size_of("fuse_conn").unwrap(), 16);
    }

    /// The submission function's signature differs between versions: 6.1
    /// `fuse_simple_request(fm, args)`, 6.18 `__fuse_simple_request(idmap, fm, args)`.
    #[test]
    fn parameter_index_follows_the_signature() {
        let mut b = Builder::new();
        b.strukt("fuse_args", 8, &[("x", 0, 0)], false); // 1
        b.strukt("fuse_mount", 8, &[("x", 0, 0)], false); // 2
        b.strukt("mnt_idmap", 8, &[("x", 0, 0)], false); // 3
        b.ptr(1); // 4
        b.ptr(2); // 5
        b.ptr(3); // 6
        b.typedef("args_ptr_t", 4); // 7
        b.proto(&[("fm", 5), ("args", 4)]); // 8
        b.func("fuse_simple_request", 8); // 9
        b.proto(&[("idmap", 6), ("fm", 5), ("args", 7)]); // 10
        b.func("__fuse_simple_request", 10); // 11
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(
            btf.param_pointing_to("fuse_simple_request", "fuse_args"),
            Some(1)
        );
        assert_eq!(
            btf.param_pointing_to("__fuse_simple_request", "fuse_args"),
            Some(2)
        );
        assert_eq!(
            btf.param_pointing_to("__fuse_simple_request", "fuse_req"),
            None
        );
        assert_eq!(btf.param_pointing_to("absent", "fuse_args"), None);
        assert!(btf.has_function("fuse_simple_request"));
    }

    /// Debian kernels: fuse and virtiofs are modules, each with split BTF
    /// numbered from the end of vmlinux, not from each other.
    #[test]
    fn second_module_types_are_numbered_from_the_base() {
        let mut base = Builder::new();
        base.int("int", 4); // 1
        base.strukt("virtqueue", 8, &[("x", 1, 0)], false); // 2
        let base_len = base.strings.len();
        let mut fuse = Builder::split(base_len);
        fuse.strukt("fuse_req", 64, &[("flags", 1, 0)], false); // 3
        fuse.ptr(3); // 4
        fuse.proto(&[("req", 4)]); // 5
        fuse.func("fuse_request_end", 5); // 6
        let mut vfs = Builder::split(base_len);
        vfs.strukt("fuse_req", 64, &[("flags", 1, 0)], false); // 3 -> 7
        vfs.ptr(2); // 4 -> 8: vmlinux's virtqueue
        vfs.strukt("virtio_fs_vq", 16, &[("lock", 1, 0), ("vq", 4, 64)], false); // 5 -> 9
        vfs.ptr(3); // 6 -> 10
        vfs.ptr(5); // 7 -> 11
        vfs.proto(&[("req", 6), ("fsvq", 7)]); // 8 -> 12
        vfs.func("virtio_fs_request_complete", 8); // 9 -> 13
        vfs.proto(&[("vq", 4)]); // 10 -> 14
        vfs.func("virtio_fs_vq_done", 10); // 11 -> 15
        let mut btf = Btf::parse(&base.finish()).unwrap();
        btf.add_blob(&fuse.finish()).unwrap();
        btf.add_blob(&vfs.finish()).unwrap();
        assert_eq!(
            btf.param_pointing_to("fuse_request_end", "fuse_req"),
            Some(0)
        );
        let complete = "virtio_fs_request_complete";
        assert_eq!(btf.param_pointing_to(complete, "fuse_req"), Some(0));
        assert_eq!(btf.param_pointing_to(complete, "virtio_fs_vq"), Some(1));
        assert_eq!(
            btf.param_pointing_to("virtio_fs_vq_done", "virtqueue"),
            Some(0)
        );
        assert_eq!(btf.offset_of("virtio_fs_vq", "vq").unwrap(), 8);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb]).is_err());
    }
}
