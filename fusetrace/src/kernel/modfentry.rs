//! fentry on functions of kernel modules (FUSE and virtio-fs are modules on
//! Debian and most distribution kernels).
//!
//! The kernel needs, besides the function's BTF id, the fd of the BTF
//! object the id belongs to (`attach_btf_obj_fd`): the module's split BTF.
//! aya 0.14's `FEntry::load` only looks in vmlinux and cannot pass that fd,
//! so this loads the program itself: the same instructions aya would load,
//! relocated with aya-obj against the maps aya already created (so events
//! still go to the one ring buffer), then `BPF_PROG_LOAD` and
//! `BPF_RAW_TRACEPOINT_OPEN` like aya does for vmlinux functions.

use std::{
    collections::HashSet,
    ffi::CString,
    mem::{size_of, zeroed},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use aya_obj::generated::{
    bpf_attach_type::{BPF_TRACE_FENTRY, BPF_TRACE_FEXIT},
    bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_info,
    bpf_prog_type::BPF_PROG_TYPE_TRACING,
};

use crate::kernel::btf::Btf;

/// A loaded and attached fentry program; detaches when dropped.
#[derive(Debug)]
pub struct ModuleFEntry {
    pub program: String,
    _link: OwnedFd,
    prog: OwnedFd,
}

impl ModuleFEntry {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

/// How many times the kernel skipped program `fd` because it was already
/// running on that CPU (`bpf_prog_info.recursion_misses`: a task preempted
/// inside it, or a nested call): a point that was not observed. Here
/// because this file holds our one `bpf(2)` wrapper (aya 0.14's
/// `ProgramInfo` does not expose the field).
pub fn recursion_misses(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: all-zero is a valid bpf_prog_info and bpf_attr.
    let mut info: bpf_prog_info = unsafe { zeroed() };
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    match sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) {
        Ok(_) => info.recursion_misses,
        Err(_) => 0,
    }
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-initialised bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The fd of the kernel BTF object of `module` (`/sys/kernel/btf/<module>`).
fn module_btf_fd(module: &str) -> Result<OwnedFd> {
    let mut id = 0u32;
    loop {
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match sys_bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                bail!("no loaded BTF object is named {module}")
            }
            Err(e) => return Err(e).context("BPF_BTF_GET_NEXT_ID"),
        }
        // SAFETY: the kernel filled next_id.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        let mut attr: bpf_attr = unsafe { zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let fd = match sys_bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => owned(fd),
            // Freed meanwhile.
            Err(_) => continue,
        };
        let mut name = [0u8; 64];
        // SAFETY: all-zero is a valid bpf_btf_info.
        let mut info: bpf_btf_info = unsafe { zeroed() };
        info.name = name.as_mut_ptr() as u64;
        info.name_len = name.len() as u32;
        let mut attr: bpf_attr = unsafe { zeroed() };
        attr.info.bpf_fd = fd.as_raw_fd() as u32;
        attr.info.info_len = size_of::<bpf_btf_info>() as u32;
        attr.info.info = &mut info as *mut bpf_btf_info as u64;
        sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        if info.kernel_btf != 0 && &name[..len] == module.as_bytes() {
            return Ok(fd);
        }
    }
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

/// Loads `program` of `object` as fentry (fexit with `exit`) on `func` of
/// `module`, using the maps of `ebpf` (loaded from the same object), and
/// attaches it.
pub fn attach(
    ebpf: &Ebpf,
    object: &[u8],
    program: &str,
    (module, func): (&str, &str),
    exit: bool,
) -> Result<ModuleFEntry> {
    let btf = Btf::from_running_kernel(&[module])?;
    // Only this module is added to vmlinux, so its ids are the kernel's.
    let btf_id = btf
        .function_id(func)
        .with_context(|| format!("{func} is not in the BTF of module {module}"))?;
    let btf_fd = module_btf_fd(module)?;

    let mut obj =
        aya_obj::Object::parse(object).map_err(|e| anyhow!("parsing the eBPF object: {e}"))?;
    let mut fds = Vec::new();
    for name in obj.maps.keys() {
        let map = ebpf
            .map(name)
            .with_context(|| format!("map {name} was not created"))?;
        fds.push((name.clone(), map_data(map).fd().as_fd().as_raw_fd()));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let maps: Vec<_> = fds
        .iter()
        .map(|(name, fd)| (name.as_str(), *fd, &obj.maps[name]))
        .collect();
    let mut relocated = obj.clone();
    relocated
        .relocate_maps(maps.into_iter(), &text_sections)
        .map_err(|e| anyhow!("relocating maps: {e}"))?;
    relocated
        .relocate_calls(&text_sections)
        .map_err(|e| anyhow!("relocating calls: {e}"))?;
    obj = relocated;
    let prog = obj
        .programs
        .get(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?;
    let insns: &[bpf_insn] = &obj.functions[&prog.function_key()].instructions;

    let mut log = vec![0u8; 1 << 20];
    // SAFETY: all-zero is a valid bpf_attr; the pointers outlive the call.
    let mut attr: bpf_attr = unsafe { zeroed() };
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = BPF_PROG_TYPE_TRACING as u32;
    load.expected_attach_type = if exit {
        BPF_TRACE_FEXIT
    } else {
        BPF_TRACE_FENTRY
    } as u32;
    let kind = if exit { "fexit" } else { "fentry" };
    load.insns = insns.as_ptr() as u64;
    load.insn_cnt = insns.len() as u32;
    let license: &CString = &prog.license;
    load.license = license.as_ptr() as u64;
    load.attach_btf_id = btf_id;
    load.__bindgen_anon_1.attach_btf_obj_fd = btf_fd.as_raw_fd() as u32;
    for (dst, src) in load.prog_name.iter_mut().zip(program.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    load.log_level = 1;
    load.log_buf = log.as_mut_ptr() as u64;
    load.log_size = log.len() as u32;
    let prog_fd = match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => owned(fd),
        Err(e) => {
            let len = log.iter().position(|&b| b == 0).unwrap_or(0);
            let text = String::from_utf8_lossy(&log[..len]);
            let last = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            bail!("loading {kind}/{func} (module {module}): {e} {last}");
        }
    };
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.raw_tracepoint.prog_fd = prog_fd.as_raw_fd() as u32;
    let link = sys_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .with_context(|| format!("attaching {kind}/{func} (module {module})"))?;
    Ok(ModuleFEntry {
        program: program.to_string(),
        _link: owned(link),
        prog: prog_fd,
    })
}
