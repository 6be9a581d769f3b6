//! Just enough of a BTF reader to find struct member offsets and enum values
//! in the running kernel (`/sys/kernel/btf/vmlinux`, and module BTF split on
//! top of it). The format is documented in the kernel's
//! Documentation/bpf/btf.rst.
//!
//! The blobs are kept as read and decoded on lookup: the kernel's BTF has
//! over 100 000 types and only a few dozen are ever asked for, so an index
//! of where each type's record starts and a name-sorted list of ids is all
//! that is built (a decoded copy with a `String` per name took ~35 MiB).

use std::path::Path;

use anyhow::{Context, Result, bail};

const MAGIC: u16 = 0xeb9f;
/// Every type record starts with name offset, info and size-or-type.
const RECORD: usize = 12;

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

/// One BTF blob as read: vmlinux, or a module's split BTF.
#[derive(Default)]
struct Blob {
    data: Vec<u8>,
    /// Where the string section is in `data`.
    strings_at: usize,
    strings_len: usize,
    /// Type ids of this blob's first type and of the first after it.
    first_id: u32,
    end_id: u32,
    /// A split blob's string offsets below this are the base's strings.
    str_base: u32,
    /// A split blob's type ids from this on are its own (moved to `first_id`).
    own_ids_from: u32,
    /// Module name (`None`: vmlinux or a standalone blob).
    module: Option<String>,
}

/// Parsed type information of one BTF blob (or a base plus split modules).
#[derive(Default)]
pub struct Btf {
    /// `blobs[0]` is the base; split blobs follow in id order.
    blobs: Vec<Blob>,
    /// Index = type id: where its record starts in its blob's `data`.
    /// Id 0 (`void`) has no record.
    records: Vec<u32>,
    /// Ids of the types lookups are by name for (structs, unions, enums,
    /// typedefs, functions, forward declarations), sorted by name, then id.
    by_name: Vec<u32>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.records.len())
            .field("named", &self.by_name.len())
            .field(
                "modules",
                &self
                    .blobs
                    .iter()
                    .filter_map(|b| b.module.as_deref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn u16_at(data: &[u8], at: usize) -> Result<u16> {
    let b = data.get(at..at + 2).context("BTF data is truncated")?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let b = data.get(at..at + 4).context("BTF data is truncated")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Bytes taken by a record's kind-specific data after the common part.
fn trailing_len(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_ENUM64 | KIND_DATASEC => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        other => bail!("unknown BTF kind {other}"),
    })
}

/// Kinds found by name (the others are never looked up by name).
fn indexed(kind: u32) -> bool {
    matches!(
        kind,
        KIND_STRUCT
            | KIND_UNION
            | KIND_ENUM
            | KIND_ENUM64
            | KIND_TYPEDEF
            | KIND_FUNC
            | KIND_FWD
            | KIND_PTR
            | KIND_FLOAT
    )
}

/// One type's record, read in place. Parsing checked that it is complete.
#[derive(Clone, Copy)]
struct Record<'a> {
    btf: &'a Btf,
    blob: &'a Blob,
    /// Where the record starts in `blob.data`.
    at: usize,
}

impl<'a> Record<'a> {
    fn word(&self, index: usize) -> u32 {
        let at = self.at + 4 * index;
        let b = &self.blob.data[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn info(&self) -> u32 {
        self.word(1)
    }
    fn kind(&self) -> u32 {
        (self.info() >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info() & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info() >> 31 == 1
    }
    fn name(&self) -> &'a [u8] {
        self.btf.string(self.blob, self.word(0))
    }
    fn size(&self) -> u32 {
        self.word(2)
    }
    /// The referred type (pointer target, alias, function's prototype).
    fn type_id(&self) -> u32 {
        self.blob.remap(self.word(2))
    }
    fn is_composite(&self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }
    /// Struct/union members: (name, type id, bit offset).
    fn members(self) -> impl Iterator<Item = (&'a [u8], u32, u32)> {
        let n = if self.is_composite() { self.vlen() } else { 0 };
        let flag = self.kind_flag();
        (0..n).map(move |i| {
            let w = 3 + 3 * i;
            let off = self.word(w + 2);
            (
                self.btf.string(self.blob, self.word(w)),
                self.blob.remap(self.word(w + 1)),
                if flag { off & 0x00ff_ffff } else { off },
            )
        })
    }
    /// Enumerators: (name, value).
    fn enumerators(self) -> impl Iterator<Item = (&'a [u8], i64)> {
        let (n, stride) = match self.kind() {
            KIND_ENUM => (self.vlen(), 2),
            KIND_ENUM64 => (self.vlen(), 3),
            _ => (0, 0),
        };
        (0..n).map(move |i| {
            let w = 3 + stride * i;
            let value = if stride == 2 {
                self.word(w + 1) as i32 as i64
            } else {
                ((self.word(w + 2) as u64) << 32 | self.word(w + 1) as u64) as i64
            };
            (self.btf.string(self.blob, self.word(w)), value)
        })
    }
    /// A function prototype's parameter types.
    fn param_types(self) -> impl Iterator<Item = u32> {
        let n = if self.kind() == KIND_FUNC_PROTO {
            self.vlen()
        } else {
            0
        };
        (0..n).map(move |i| self.blob.remap(self.word(3 + 2 * i + 1)))
    }
}

impl Blob {
    fn remap(&self, id: u32) -> u32 {
        if self.own_ids_from == 0 || id < self.own_ids_from {
            id
        } else {
            id - self.own_ids_from + self.first_id
        }
    }
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
        btf.add_blob(data, None)
            .with_context(|| format!("parsing {}", vmlinux.display()))?;
        for module in modules {
            let path = Path::new("/sys/kernel/btf").join(module);
            if let Ok(data) = std::fs::read(&path) {
                btf.add_blob(data, Some(module))
                    .with_context(|| format!("parsing {}", path.display()))?;
            }
        }
        btf.index_names();
        Ok(btf)
    }

    /// Parses one standalone BTF blob.
    pub fn parse(data: &[u8]) -> Result<Btf> {
        let mut btf = Btf::default();
        btf.add_blob(data.to_vec(), None)?;
        btf.index_names();
        Ok(btf)
    }

    /// Adds a blob whose type ids and string offsets continue after the
    /// base's (split BTF, as in `/sys/kernel/btf/<module>`). Call
    /// [`Btf::index_names`] after the last one.
    fn add_blob(&mut self, data: Vec<u8>, module: Option<&str>) -> Result<()> {
        if u16_at(&data, 0)? != MAGIC {
            bail!("not BTF data (bad magic)");
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let strings_at = hdr_len + str_off;
        let types = data
            .get(types_at..types_at + type_len)
            .context("BTF type section out of bounds")?;
        data.get(strings_at..strings_at + str_len)
            .context("BTF string section out of bounds")?;
        if self.records.is_empty() {
            self.records.push(0); // void
        }
        let first_id = self.records.len() as u32;
        let mut at = 0usize;
        while at + RECORD <= types.len() {
            let info = u32_at(types, at + 4)?;
            let end = at + RECORD + trailing_len((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
            if end > types.len() {
                bail!("BTF data is truncated");
            }
            self.records.push((types_at + at) as u32);
            at = end;
        }
        // Split blobs refer to the base's strings and types by the base's
        // offsets and ids; every module numbers its own from the base's end.
        let (str_base, own_ids_from) = match self.blobs.first() {
            Some(base) => (base.strings_len as u32, base.end_id),
            None => (0, 0),
        };
        self.blobs.push(Blob {
            data,
            strings_at,
            strings_len: str_len,
            first_id,
            end_id: self.records.len() as u32,
            str_base,
            own_ids_from,
            module: module.map(str::to_string),
        });
        Ok(())
    }

    /// Sorts the named types' ids by name (ties by id, so that the first
    /// declared wins as before), for binary search.
    fn index_names(&mut self) {
        let mut ids: Vec<u32> = (1..self.records.len() as u32)
            .filter(|&id| {
                let r = self.record(id).unwrap();
                indexed(r.kind()) && !r.name().is_empty()
            })
            .collect();
        ids.sort_unstable_by(|&a, &b| {
            let (ra, rb) = (self.record(a).unwrap(), self.record(b).unwrap());
            ra.name().cmp(rb.name()).then(a.cmp(&b))
        });
        self.by_name = ids;
    }

    /// A NUL-terminated string of `blob` (empty when out of range).
    fn string<'a>(&'a self, blob: &'a Blob, off: u32) -> &'a [u8] {
        let (blob, off) = if off < blob.str_base {
            (&self.blobs[0], off)
        } else {
            (blob, off - blob.str_base)
        };
        let off = off as usize;
        if off >= blob.strings_len {
            return &[];
        }
        let s = &blob.data[blob.strings_at + off..blob.strings_at + blob.strings_len];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn record(&self, id: u32) -> Option<Record<'_>> {
        if id == 0 {
            return None;
        }
        let at = *self.records.get(id as usize)? as usize;
        let blob = self.blobs.iter().find(|b| id < b.end_id)?;
        Some(Record {
            btf: self,
            blob,
            at,
        })
    }

    /// The types named `name` with their ids, in id order.
    fn named(&self, name: &str) -> impl Iterator<Item = (u32, Record<'_>)> {
        let key = name.as_bytes();
        let name_of = |id: u32| self.record(id).map(|r| r.name()).unwrap_or_default();
        let start = self.by_name.partition_point(|&id| name_of(id) < key);
        self.by_name[start..]
            .iter()
            .take_while(move |&&id| name_of(id) == key)
            .filter_map(|&id| Some((id, self.record(id)?)))
    }

    /// Looks through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<Record<'_>> {
        for _ in 0..32 {
            let r = self.record(id)?;
            match r.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = r.type_id()
                }
                _ => return Some(r),
            }
        }
        None
    }

    fn composite(&self, name: &str) -> Option<Record<'_>> {
        // Skip forward declarations and empty shells.
        self.named(name)
            .map(|(_, r)| r)
            .find(|r| r.is_composite() && r.vlen() > 0)
    }

    /// Finds `member` in a struct's members, looking inside anonymous
    /// structs and unions; returns its bit offset and type.
    fn find_member(&self, strukt: Record<'_>, member: &str) -> Option<(u32, u32)> {
        for (name, type_id, bit_offset) in strukt.members() {
            if name == member.as_bytes() {
                return Some((bit_offset, type_id));
            }
            if name.is_empty()
                && let Some(inner) = self.resolve(type_id).filter(|r| r.is_composite())
                && let Some((off, ty)) = self.find_member(inner, member)
            {
                return Some((bit_offset + off, ty));
            }
        }
        None
    }

    /// Bit offset of a dotted member path (bitfields included).
    pub fn bit_offset_of(&self, strukt: &str, path: &str) -> Result<u32> {
        let mut current = self
            .composite(strukt)
            .with_context(|| format!("struct {strukt} is not in the kernel's BTF"))?;
        let mut total = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, ty) = self.find_member(current, part).with_context(|| {
                format!("struct {strukt} has no member {path} in the kernel's BTF")
            })?;
            total += off;
            if parts.peek().is_some() {
                current = match self.resolve(ty) {
                    Some(r) if r.is_composite() => r,
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
            .map(|r| r.size())
            .with_context(|| format!("struct {strukt} is not in the kernel's BTF"))
    }

    /// Value of an enumerator, e.g. `enum_value("fuse_req_flag", "FR_BACKGROUND")`.
    pub fn enum_value(&self, enum_name: &str, value: &str) -> Result<i64> {
        self.named(enum_name)
            .find_map(|(_, r)| {
                r.enumerators()
                    .find(|(n, _)| *n == value.as_bytes())
                    .map(|(_, v)| v)
            })
            .with_context(|| format!("enum {enum_name} has no {value} in the kernel's BTF"))
    }

    /// Whether a named type of any kind exists (e.g. `btf_trace_fuse_request_send`).
    pub fn has_type(&self, name: &str) -> bool {
        self.named(name).next().is_some()
    }

    /// The functions named `name`, in id order.
    fn functions(&self, name: &str) -> impl Iterator<Item = (u32, Record<'_>)> {
        self.named(name).filter(|(_, r)| r.kind() == KIND_FUNC)
    }

    /// Whether a function of that name is described (candidates for fentry).
    pub fn has_function(&self, name: &str) -> bool {
        self.functions(name).next().is_some()
    }

    /// Type id of function `func` (for fentry's `attach_btf_id`).
    pub fn function_id(&self, func: &str) -> Option<u32> {
        self.functions(func).next().map(|(id, _)| id)
    }

    /// The module whose BTF describes function `func` (`None`: vmlinux, or
    /// not described).
    pub fn function_module(&self, func: &str) -> Option<&str> {
        self.functions(func).next()?.1.blob.module.as_deref()
    }

    /// How many parameters function `func` takes (where an fexit program
    /// finds its return value).
    pub fn param_count(&self, func: &str) -> Option<usize> {
        let proto = self.functions(func).find_map(|(_, f)| {
            self.resolve(f.type_id())
                .filter(|p| p.kind() == KIND_FUNC_PROTO)
        })?;
        Some(proto.param_types().count())
    }

    /// Index of the first parameter of function `func` that is a pointer
    /// to `struct pointee` (signatures differ between kernel versions).
    pub fn param_pointing_to(&self, func: &str, pointee: &str) -> Option<usize> {
        let proto = self.functions(func).find_map(|(_, f)| {
            self.resolve(f.type_id())
                .filter(|p| p.kind() == KIND_FUNC_PROTO)
        })?;
        proto.param_types().position(|ty| {
            let Some(ptr) = self.resolve(ty).filter(|r| r.kind() == KIND_PTR) else {
                return false;
            };
            self.resolve(ptr.type_id()).is_some_and(|target| {
                (target.is_composite() || target.kind() == KIND_FWD)
                    && target.name() == pointee.as_bytes()
            })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob by hand: the reader must not depend on the machine.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// Split BTF: string offsets continue after the base's strings.
        str_base: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                str_base: 0,
            }
        }
        /// A module's blob on top of a base whose strings are `base_len` long.
        pub(crate) fn split(base_len: usize) -> Self {
            Builder {
                types: Vec::new(),
                strings: Vec::new(),
                str_base: base_len as u32,
            }
        }
        pub(crate) fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        pub(crate) fn word(&mut self, w: u32) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_INT << 24);
            self.word(size);
            self.word(size * 8);
        }
        pub(crate) fn strukt(
            &mut self,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
            bitfields: bool,
        ) {
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
        pub(crate) fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) {
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
        pub(crate) fn fwd(&mut self, name: &str) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_FWD << 24);
            self.word(0);
        }
        pub(crate) fn typedef(&mut self, name: &str, ty: u32) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_TYPEDEF << 24);
            self.word(ty);
        }
        pub(crate) fn ptr(&mut self, ty: u32) {
            self.word(0);
            self.word(KIND_PTR << 24);
            self.word(ty);
        }
        pub(crate) fn proto(&mut self, params: &[(&str, u32)]) {
            self.word(0);
            self.word((KIND_FUNC_PROTO << 24) | params.len() as u32);
            self.word(0);
            for (p, ty) in params {
                let pn = self.s(p);
                self.word(pn);
                self.word(*ty);
            }
        }
        pub(crate) fn func(&mut self, name: &str, proto: u32) {
            let n = self.s(name);
            self.word(n);
            self.word(KIND_FUNC << 24);
            self.word(proto);
        }
        pub(crate) fn finish(self) -> Vec<u8> {
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
        let mut btf = Btf::default();
        btf.add_blob(base.finish(), None).unwrap();
        btf.add_blob(fuse.finish(), Some("fuse")).unwrap();
        btf.add_blob(vfs.finish(), Some("virtiofs")).unwrap();
        btf.index_names();
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
        assert_eq!(btf.function_module(complete), Some("virtiofs"));
        assert_eq!(btf.function_module("fuse_request_end"), Some("fuse"));
        assert_eq!(btf.size_of("virtqueue").unwrap(), 8, "base type");
    }

    /// Names are found by binary search over ids sorted by name: neighbours
    /// sharing a prefix are told apart, and among types of one name the
    /// first declared that fits wins.
    #[test]
    fn lookups_by_name_among_neighbours() {
        let mut b = Builder::new();
        b.int("int", 4); // 1
        b.fwd("fuse_req"); // 2
        b.strukt("fuse_req", 64, &[("flags", 1, 0)], false); // 3
        b.strukt("fuse_req", 32, &[("other", 1, 0)], false); // 4: a second copy
        b.enumeration("fuse_req_flag", &[("FR_ISREPLY", 0), ("FR_PRIVATE", 11)]); // 5
        b.enumeration("fuse", &[("FR_PRIVATE", -1)]); // 6
        b.typedef("fuse_r", 1); // 7
        b.ptr(3); // 8
        b.proto(&[("req", 8)]); // 9
        b.func("fuse_req", 9); // 10: a function may share a struct's name
        b.func("fuse_reqs", 9); // 11
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(
            btf.size_of("fuse_req").unwrap(),
            64,
            "not the fwd, not the copy"
        );
        assert_eq!(btf.offset_of("fuse_req", "flags").unwrap(), 0);
        assert!(btf.offset_of("fuse_req", "other").is_err());
        assert_eq!(btf.enum_value("fuse_req_flag", "FR_PRIVATE").unwrap(), 11);
        assert_eq!(btf.enum_value("fuse", "FR_PRIVATE").unwrap(), -1);
        assert!(btf.enum_value("fuse_req", "FR_PRIVATE").is_err());
        for present in ["fuse", "fuse_r", "fuse_req", "fuse_req_flag", "fuse_reqs"] {
            assert!(btf.has_type(present), "{present}");
        }
        for absent in [
            "",
            "fus",
            "fuse_",
            "fuse_re",
            "fuse_req_flags",
            "int",
            "zzz",
        ] {
            assert!(!btf.has_type(absent), "{absent}");
        }
        assert_eq!(btf.function_id("fuse_req"), Some(10));
        assert_eq!(btf.function_id("fuse_reqs"), Some(11));
        assert!(!btf.has_function("fuse_req_flag"));
        assert_eq!(btf.param_pointing_to("fuse_req", "fuse_req"), Some(0));
        assert_eq!(btf.function_module("fuse_req"), None, "standalone blob");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb]).is_err());
    }
}
