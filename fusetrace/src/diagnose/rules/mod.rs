//! The rules `diagnose` asks, one file per cause. Each is a [`Rule`]: it
//! watches one connection's finished requests and states its findings at
//! the end (`super::finding`). A new rule is one file here and one line in
//! [`all`].

pub mod background_queue;
pub mod cache;
pub mod daemon_concurrency;
pub mod enosys;
pub mod error_storm;
pub mod in_flight;
pub mod interrupt_storm;
pub mod io_uring_unused;
pub mod page_cache_bypassed;
pub mod slow_paths;
pub mod small_transfers;
#[cfg(test)]
mod synthetic;
pub mod writeback;

use super::finding::Rule;

/// A fresh set of every rule, for one connection.
pub fn all() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(cache::Caches::default()),
        Box::new(daemon_concurrency::DaemonConcurrency::default()),
        Box::new(background_queue::BackgroundQueue::default()),
        Box::new(io_uring_unused::IoUringUnused::default()),
        Box::new(enosys::Enosys::default()),
        Box::new(error_storm::ErrorStorm::default()),
        Box::new(interrupt_storm::InterruptStorm::default()),
        Box::new(slow_paths::SlowPaths::default()),
        Box::new(small_transfers::SmallTransfers::default()),
        Box::new(page_cache_bypassed::PageCacheBypassed::default()),
    ]
}
