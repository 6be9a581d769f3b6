//! virtio-fs, where no daemon reads `/dev/fuse`: the request goes to a
//! virtqueue (`virtq`, a send like any other: `request.rs`) and comes back
//! as the device's completion (`device_done`), which carries the time of
//! the interrupt that announced it (`virtio_fs_vq_done`), kept per
//! virtqueue until the completion is seen.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use fusetrace_common::{EventKind, KernelLayout};

use crate::{memory::kread, request::on_request};

/// Latest device interrupt (`virtio_fs_vq_done`) per `struct virtqueue *`.
#[map]
static VQ_DONE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(256, 0);

#[inline(always)]
pub(crate) fn on_device_irq(vq: Option<u64>) {
    if let Some(vq) = vq {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = VQ_DONE.insert(&vq, &now, 0);
    }
}

#[inline(always)]
pub(crate) fn on_device_done(req: Option<u64>, fsvq: Option<u64>, l: &KernelLayout) {
    let irq = fsvq
        .and_then(|f| kread::<u64>(f, l.fsvq_vq))
        // SAFETY: plain copy of the map value.
        .and_then(|vq| unsafe { VQ_DONE.get(&vq) }.copied())
        .unwrap_or(0);
    on_request::<false>(EventKind::DeviceDone, req, l, irq);
}
