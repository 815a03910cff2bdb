// SPDX-License-Identifier: GPL-2.0-only
//! The BPF cgroup move watcher's loader (`bpf/canopy_moves.bpf.c`): loads and attaches the
//! `cgroup_attach_task` tracepoint program and hands the daemon a [`MoveSource`]: the ring
//! buffer's epoll fd, which the daemon polls on its own task (no thread hop between the kernel's
//! wakeup and the controller), and a drain that turns every `struct canopy_move_event` into a
//! move record (scx and fallback modes alike) and reports lost events (a full ring buffer) so
//! the daemon rescans. When the kernel refuses the program (no BTF, no tracepoint, no
//! permission) the factory returns the reason and the daemon keeps its inotify fallback.
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::Mutex;

use canopy_controller::daemon::MoveRecord;
use canopy_controller::daemon::MoveSource;
use canopy_controller::daemon::MoveWatcherFactory;
use canopy_sys::monotonic_now_ns;
use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::RingBuffer;
use libbpf_rs::RingBufferBuilder;

use super::bpf_bytes::from_bytes;
use super::bpf_intf;
use super::skel::moves::CanopyMovesSkel;
use super::skel::moves::CanopyMovesSkelBuilder;

/// The daemon's hook: loads the watcher when called.
pub fn factory() -> MoveWatcherFactory {
    Box::new(|| MoveWatcher::load().map(|watcher| Box::new(watcher) as Box<dyn MoveSource>))
}

/// What the ring buffer callback collected since the last drain, and the delivery delays.
#[derive(Default)]
struct Collected {
    records: Vec<MoveRecord>,
    /// Kernel attach → record read, µs (logged when the watcher is dropped).
    delivery_us: Vec<u64>,
}

/// The attached program and its ring buffer. Dropping it detaches the program.
struct MoveWatcher {
    ring: RingBuffer<'static>,
    skel: CanopyMovesSkel<'static>,
    collected: Arc<Mutex<Collected>>,
}

impl MoveWatcher {
    fn load() -> Result<Self, String> {
        // One leaked OpenObject per load: the skeleton borrows it for its whole life.
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let open = CanopyMovesSkelBuilder::default()
            .open(storage)
            .map_err(|e| format!("opening canopy_moves: {e}"))?;
        let mut skel = open
            .load()
            .map_err(|e| format!("loading canopy_moves (tp_btf/cgroup_attach_task): {e}"))?;
        skel.attach()
            .map_err(|e| format!("attaching to cgroup:cgroup_attach_task: {e}"))?;
        let collected = Arc::new(Mutex::new(Collected::default()));
        let sink = Arc::clone(&collected);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.move_events, move |bytes: &[u8]| {
                if bytes.len() < std::mem::size_of::<bpf_intf::canopy_move_event>() {
                    return 0;
                }
                let event: bpf_intf::canopy_move_event = from_bytes(bytes);
                let read_ns = monotonic_now_ns();
                if let Ok(mut collected) = sink.lock() {
                    collected.records.push(MoveRecord {
                        tid: event.tid,
                        threadgroup: event.threadgroup != 0,
                        timestamp_ns: event.timestamp_ns,
                    });
                    if collected.delivery_us.len() < 65536 {
                        collected
                            .delivery_us
                            .push(read_ns.saturating_sub(event.timestamp_ns) / 1000);
                    }
                }
                0
            })
            .map_err(|e| format!("opening the move_events ring buffer: {e}"))?;
        let ring = builder
            .build()
            .map_err(|e| format!("opening the move_events ring buffer: {e}"))?;
        tracing::info!("BPF cgroup move watcher attached to cgroup:cgroup_attach_task");
        Ok(MoveWatcher {
            ring,
            skel,
            collected,
        })
    }
}

impl MoveSource for MoveWatcher {
    fn fd(&self) -> std::os::fd::RawFd {
        self.ring.epoll_fd()
    }

    fn drain(&mut self, out: &mut Vec<MoveRecord>) -> u64 {
        let _ = self.ring.consume();
        if let Ok(mut collected) = self.collected.lock() {
            out.append(&mut collected.records);
        }
        self.skel
            .maps
            .bss_data
            .as_deref()
            // SAFETY: a plain read of a counter the BPF program increments atomically in the
            // mmap'd .bss; a stale read only delays the report to the next drain.
            .map(|bss| unsafe { std::ptr::read_volatile(&bss.moves_lost) })
            .unwrap_or(0)
    }
}

impl Drop for MoveWatcher {
    fn drop(&mut self) {
        let mut samples = self
            .collected
            .lock()
            .map(|c| c.delivery_us.clone())
            .unwrap_or_default();
        if samples.is_empty() {
            return;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        tracing::info!(
            moves = samples.len(),
            p50_us = at(0.5),
            p99_us = at(0.99),
            max_us = at(1.0),
            "move watcher: kernel attach → ring buffer record read"
        );
    }
}
