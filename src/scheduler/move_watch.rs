// SPDX-License-Identifier: GPL-2.0-only
//! The BPF cgroup move watcher's loader (`bpf/canopy_moves.bpf.c`): loads and attaches the
//! `cgroup_attach_task` tracepoint program on a thread of its own, then turns every
//! `struct canopy_move_event` from its ring buffer into a move event for the daemon (scx and
//! fallback modes alike) until the daemon stops. Lost events (a full ring buffer) are reported
//! so the daemon rescans. When the kernel refuses the program (no BTF, no tracepoint, no
//! permission) the factory returns the reason and the daemon keeps its inotify fallback.
use std::mem::MaybeUninit;
use std::sync::mpsc;
use std::time::Duration;

use canopy_controller::daemon::MoveSink;
use canopy_controller::daemon::MoveWatcherFactory;
use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::RingBufferBuilder;

use super::bpf_intf;
use super::root::from_bytes;
use super::skel::moves::CanopyMovesSkelBuilder;

/// How long the daemon waits for the program to load and attach.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the watcher's thread wakes without events to check for stop and lost events.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The daemon's hook: starts the watcher when called.
pub fn factory() -> MoveWatcherFactory {
    Box::new(start)
}

fn start(sink: MoveSink) -> Result<std::thread::JoinHandle<()>, String> {
    let (started_sender, started) = mpsc::channel::<Result<(), String>>();
    let thread = std::thread::Builder::new()
        .name("canopy-moves".into())
        .spawn(move || watch(sink, started_sender))
        .map_err(|e| format!("starting the move watcher thread: {e}"))?;
    match started.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(reason)) => {
            let _ = thread.join();
            Err(reason)
        }
        Err(_) => Err(format!(
            "the move watcher did not start within {START_TIMEOUT:?}"
        )),
    }
}

/// Loads, attaches and runs the watcher; tells `started` whether it is running.
fn watch(sink: MoveSink, started: mpsc::Sender<Result<(), String>>) {
    let mut storage = MaybeUninit::uninit();
    let loaded = CanopyMovesSkelBuilder::default()
        .open(&mut storage)
        .map_err(|e| format!("opening canopy_moves: {e}"))
        .and_then(|open| {
            open.load()
                .map_err(|e| format!("loading canopy_moves (tp_btf/cgroup_attach_task): {e}"))
        })
        .and_then(|mut skel| {
            skel.attach()
                .map_err(|e| format!("attaching to cgroup:cgroup_attach_task: {e}"))?;
            Ok(skel)
        });
    let skel = match loaded {
        Ok(skel) => skel,
        Err(reason) => {
            let _ = started.send(Err(reason));
            return;
        }
    };
    let events_sink = sink.clone();
    // How long the kernel's attach took to reach this thread (µs), for the log at stop: it
    // tells the ring buffer's share of the daemon's move → re-clamped latency from the rest.
    let delivery_us = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let delivered = std::sync::Arc::clone(&delivery_us);
    let mut builder = RingBufferBuilder::new();
    let added = builder.add(&skel.maps.move_events, move |bytes: &[u8]| {
        if bytes.len() < std::mem::size_of::<bpf_intf::canopy_move_event>() {
            return 0;
        }
        let event: bpf_intf::canopy_move_event = from_bytes(bytes);
        let now = canopy_controller::controller::monotonic_ns();
        if let Ok(mut samples) = delivered.lock() {
            if samples.len() < 65536 {
                samples.push(now.saturating_sub(event.timestamp_ns) / 1000);
            }
        }
        // A negative return stops the poll: the daemon is gone.
        if events_sink.moved(event.tid, event.threadgroup != 0, event.timestamp_ns) {
            0
        } else {
            -1
        }
    });
    let ring = added.map(|_| ()).and_then(|()| builder.build());
    let ring = match ring {
        Ok(ring) => ring,
        Err(e) => {
            let _ = started.send(Err(format!("opening the move_events ring buffer: {e}")));
            return;
        }
    };
    let _ = started.send(Ok(()));
    tracing::info!("BPF cgroup move watcher attached to cgroup:cgroup_attach_task");
    let mut lost_reported = 0u64;
    while !sink.stopping() {
        if ring.poll(POLL_INTERVAL).is_err() && sink.stopping() {
            break;
        }
        let lost = skel
            .maps
            .bss_data
            .as_deref()
            // SAFETY: a plain read of a counter the BPF program increments atomically in the
            // mmap'd .bss; a torn or stale read only delays the report to the next poll.
            .map(|bss| unsafe { std::ptr::read_volatile(&bss.moves_lost) })
            .unwrap_or(0);
        if lost > lost_reported {
            if !sink.lost(lost - lost_reported) {
                break;
            }
            lost_reported = lost;
        }
    }
    drop(ring);
    drop(skel);
    let mut samples = delivery_us.lock().map(|s| s.clone()).unwrap_or_default();
    if !samples.is_empty() {
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
