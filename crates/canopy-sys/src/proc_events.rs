//! The netlink proc connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): fork, exec, comm and exit
//! events for every task on the system, on tokio.
//!
//! Hand-written rather than the `proc-connector` crate (0.3.0): that crate receives one event
//! per `recv` call and hands back a freshly parsed value each time, subscribes unfiltered in
//! `new()` before a filter can be set, and then blocks reading the subscription ack (eating
//! whatever event comes first). canopy needs a batch of datagrams per wakeup (`recvmmsg`) decoded
//! into a caller-owned `Vec` of `Copy` events, an overrun that is an event rather than an error,
//! and an `AsyncFd`; that is about as much code as the glue around the crate would be.
//!
//! Event filtering: since Linux 6.6 a listener may send `struct proc_input { mcast_op,
//! event_type }` to receive only some events; older kernels silently ignore an 8-byte
//! subscription (no events, no ack), so the kernel release decides which form is sent.
//!
//! The connector is lossy: when the socket's receive buffer fills, the kernel drops events and
//! the next receive fails with `ENOBUFS`. That becomes [`EventKind::Overrun`]; the caller must
//! rescan `/proc`.
//!
//! This file owns the socket (subscribe, batch receive, filter, unsubscribe on drop) and the
//! event types; the message layout (encoding the subscription, decoding a datagram) is the pure
//! `proc_events/wire.rs`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::{Comm, Pid};

mod wire;
pub use wire::{decode_datagram, encode_control, Decoded};
use wire::{CN_IDX_PROC, PROC_CN_MCAST_IGNORE, PROC_CN_MCAST_LISTEN};

const NETLINK_CONNECTOR: libc::c_int = 11;
/// Room for one datagram; a proc event message is 76 bytes today.
const SLOT_LEN: usize = 256;
/// The most datagrams one receive call takes.
pub const MAX_BATCH: usize = 64;

/// `PROC_EVENT_*` bits (`include/uapi/linux/cn_proc.h`).
pub mod event_bits {
    /// A task forked (process or thread).
    pub const FORK: u32 = 0x0000_0001;
    /// A task exec'd.
    pub const EXEC: u32 = 0x0000_0002;
    /// A task's uid changed.
    pub const UID: u32 = 0x0000_0004;
    /// A task's gid changed.
    pub const GID: u32 = 0x0000_0040;
    /// A task called setsid.
    pub const SID: u32 = 0x0000_0080;
    /// A task was ptrace-attached or detached.
    pub const PTRACE: u32 = 0x0000_0100;
    /// A task's comm changed (prctl PR_SET_NAME, exec, pthread_setname_np).
    pub const COMM: u32 = 0x0000_0200;
    /// A task exited with a non-zero code (filter only, 6.6+).
    pub const NONZERO_EXIT: u32 = 0x2000_0000;
    /// A task dumped core.
    pub const COREDUMP: u32 = 0x4000_0000;
    /// A task exited.
    pub const EXIT: u32 = 0x8000_0000;
}

/// The proc connector socket could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum ProcEventsError {
    /// A socket operation failed.
    #[error("proc connector: cannot {operation}: {source}")]
    Socket {
        /// What was being done.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered the subscription with an error.
    #[error("proc connector: the kernel refused the subscription (event mask {event_mask:#x}): {source}")]
    SubscriptionRefused {
        /// The events asked for.
        event_mask: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// How to subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEventsConfig {
    /// `PROC_EVENT_*` bits to receive (see [`event_bits`]); applied by the kernel on 6.6+,
    /// and by this module on older kernels.
    pub event_mask: u32,
    /// The socket's receive buffer in bytes (`SO_RCVBUFFORCE`, else `SO_RCVBUF`); `None`
    /// keeps the system default. Small buffers overrun sooner (tests use that).
    pub receive_buffer_bytes: Option<usize>,
    /// How many datagrams one wakeup takes at most (1..=[`MAX_BATCH`]).
    pub batch_size: usize,
    /// Ask the kernel to filter where it can (6.6+); `false` subscribes to everything and
    /// filters here, as on older kernels (tests use it to cover that path).
    pub prefer_kernel_filter: bool,
}

impl Default for ProcEventsConfig {
    /// Fork, exec, comm and exit; a 4 MiB receive buffer; batches of 64; kernel filtering.
    fn default() -> Self {
        ProcEventsConfig {
            event_mask: event_bits::FORK | event_bits::EXEC | event_bits::COMM | event_bits::EXIT,
            receive_buffer_bytes: Some(4 << 20),
            batch_size: MAX_BATCH,
            prefer_kernel_filter: true,
        }
    }
}

/// One event with the kernel's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEvent {
    /// `CLOCK_MONOTONIC` time of the event in ns (`ktime_get_ns`); 0 for [`EventKind::Overrun`].
    pub timestamp_ns: u64,
    /// The CPU that reported it.
    pub cpu: u32,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A task was created. `child_tid == child_pid` for a new process, else a new thread of
    /// `child_pid`.
    Fork {
        /// The parent thread.
        parent_tid: Pid,
        /// The parent's process.
        parent_pid: Pid,
        /// The new thread.
        child_tid: Pid,
        /// The new thread's process.
        child_pid: Pid,
    },
    /// A task exec'd (its comm and exe changed).
    Exec {
        /// The thread.
        tid: Pid,
        /// Its process.
        pid: Pid,
    },
    /// A task's comm changed.
    Comm {
        /// The thread.
        tid: Pid,
        /// Its process.
        pid: Pid,
        /// The new name.
        comm: Comm,
    },
    /// A task exited.
    Exit {
        /// The thread.
        tid: Pid,
        /// Its process.
        pid: Pid,
        /// The exit code (`wait` status form).
        exit_code: u32,
        /// The signal sent to the parent.
        exit_signal: u32,
    },
    /// Events were lost (the receive buffer overflowed): rescan `/proc`.
    Overrun,
    /// Another event type (uid, gid, sid, ptrace, coredump) with its `PROC_EVENT_*` value.
    Other {
        /// The `what` field.
        what: u32,
    },
}

/// Drops every rename a later rename of the same thread in `events` supersedes, keeping the
/// order of the rest: a thread that calls `PR_SET_NAME` 64 times in one batch costs its reader
/// one rename, the last (the only name that still holds). Returns how many were dropped.
pub fn coalesce_renames(events: &mut Vec<ProcEvent>) -> usize {
    let mut renamed_later = std::collections::HashSet::new();
    // Newest first: a rename is kept only if no later one of the same thread was seen.
    let mut keep: Vec<bool> = events
        .iter()
        .rev()
        .map(|event| match event.kind {
            EventKind::Comm { tid, .. } => renamed_later.insert(tid),
            _ => true,
        })
        .collect();
    keep.reverse();
    let before = events.len();
    let mut flags = keep.into_iter();
    events.retain(|_| flags.next().unwrap_or(true));
    before - events.len()
}

/// A subscribed proc connector socket, registered with the tokio reactor.
#[derive(Debug)]
pub struct ProcEvents {
    socket: AsyncFd<OwnedFd>,
    slab: Box<[u8]>,
    batch_size: usize,
    event_mask: u32,
    kernel_filters: bool,
    nonce: u32,
    drained: bool,
}

impl ProcEvents {
    /// Opens, binds and subscribes. Must run inside a tokio runtime.
    pub fn subscribe(config: ProcEventsConfig) -> Result<ProcEvents, ProcEventsError> {
        let socket = open_socket(config.receive_buffer_bytes)?;
        let kernel_filters = config.prefer_kernel_filter
            && kernel_release()
                .map(|release| kernel_supports_event_filter(&release))
                .unwrap_or(false);
        // The kernel multicasts every subscription's ack to every listener with the request's
        // ack + 1 (the sequence is overwritten by its per-CPU counter on current kernels), so
        // our socket's port id as the ack tells ours apart. Acks pass the 6.6+ event filter
        // only for unfiltered listeners, so a refusal is detected where the kernel sends it.
        let nonce = local_port(socket.as_raw_fd())?;
        send_control(
            socket.as_raw_fd(),
            PROC_CN_MCAST_LISTEN,
            kernel_filters.then_some(config.event_mask),
            nonce,
        )?;
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and never replaced, so its fd stays
        // open and the same for the `AsyncFd`'s whole life.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|error| ProcEventsError::Socket {
                operation: "register with tokio",
                source: error.into_parts().1,
            })?;
        let batch_size = config.batch_size.clamp(1, MAX_BATCH);
        Ok(ProcEvents {
            socket,
            slab: vec![0u8; batch_size * SLOT_LEN].into_boxed_slice(),
            batch_size,
            event_mask: config.event_mask,
            kernel_filters,
            nonce,
            drained: true,
        })
    }

    /// Whether the kernel filters events for us (6.6+), rather than this module.
    pub fn kernel_filters(&self) -> bool {
        self.kernel_filters
    }

    /// Waits for events, then appends every one that is ready (up to the batch size in
    /// datagrams) to `events`. Returns how many were appended (at least one). An overrun
    /// appends [`EventKind::Overrun`]. Cancel-safe.
    pub async fn recv_batch(
        &mut self,
        events: &mut Vec<ProcEvent>,
    ) -> Result<usize, ProcEventsError> {
        loop {
            let mut guard =
                self.socket
                    .readable()
                    .await
                    .map_err(|source| ProcEventsError::Socket {
                        operation: "wait for events",
                        source,
                    })?;
            let fd = guard.get_inner().as_raw_fd();
            let result = guard.try_io(|_| receive_batch(fd, &mut self.slab, self.batch_size));
            let Ok(received) = result else {
                continue; // spurious readiness: try_io cleared it
            };
            // Fewer datagrams than asked for: the queue was empty when the kernel returned. The
            // readiness is cleared now rather than by one more `recvmmsg` failing with EAGAIN
            // (tokio keeps it if an edge arrived since this readiness was reported, so no event
            // waits): two syscalls fewer per wakeup of a daemon that wakes for every fork.
            self.drained = received.as_ref().is_ok_and(|b| b.count < self.batch_size);
            if self.drained {
                guard.clear_ready();
            }
            let appended = self.decode_received(received, events)?;
            if appended > 0 {
                return Ok(appended);
            }
        }
    }

    /// Appends whatever events are ready now, without waiting; `Ok(0)` if none.
    pub fn try_recv_batch(
        &mut self,
        events: &mut Vec<ProcEvent>,
    ) -> Result<usize, ProcEventsError> {
        let received = receive_batch(
            self.socket.get_ref().as_raw_fd(),
            &mut self.slab,
            self.batch_size,
        );
        self.drained = match &received {
            Ok(batch) => batch.count < self.batch_size,
            Err(_) => true,
        };
        match received {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => self.decode_received(other, events),
        }
    }

    /// Whether the last receive emptied the socket's queue (it returned fewer datagrams than
    /// the batch holds): a caller draining a burst stops there instead of asking again.
    pub fn drained(&self) -> bool {
        self.drained
    }

    fn decode_received(
        &self,
        received: io::Result<ReceivedBatch>,
        events: &mut Vec<ProcEvent>,
    ) -> Result<usize, ProcEventsError> {
        let batch = match received {
            Ok(batch) => batch,
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                events.push(ProcEvent {
                    timestamp_ns: 0,
                    cpu: 0,
                    kind: EventKind::Overrun,
                });
                return Ok(1);
            }
            Err(error)
                if error.kind() == io::ErrorKind::WouldBlock
                    || error.kind() == io::ErrorKind::Interrupted =>
            {
                return Ok(0)
            }
            Err(source) => {
                return Err(ProcEventsError::Socket {
                    operation: "receive",
                    source,
                })
            }
        };
        let before = events.len();
        let slots = self
            .slab
            .chunks(SLOT_LEN)
            .zip(batch.lengths.iter().zip(batch.from_kernel));
        for (slot, (&length, from_kernel)) in slots.take(batch.count) {
            if !from_kernel {
                continue; // only the kernel (port 0) may speak on this group
            }
            let datagram = slot.get(..length).unwrap_or(slot);
            match decode_datagram(datagram) {
                Decoded::Event(event) => {
                    if self.wanted(&event) {
                        events.push(event);
                    }
                }
                Decoded::Ack {
                    errno,
                    acknowledgement,
                    ..
                } if errno != 0 && acknowledgement == self.nonce.wrapping_add(1) => {
                    return Err(ProcEventsError::SubscriptionRefused {
                        event_mask: self.event_mask,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                Decoded::Ack { .. } | Decoded::Ignored => {}
            }
        }
        Ok(events.len() - before)
    }

    fn wanted(&self, event: &ProcEvent) -> bool {
        let bit = match event.kind {
            EventKind::Overrun => return true,
            EventKind::Fork { .. } => event_bits::FORK,
            EventKind::Exec { .. } => event_bits::EXEC,
            EventKind::Comm { .. } => event_bits::COMM,
            EventKind::Exit { .. } => event_bits::EXIT,
            EventKind::Other { what } => what,
        };
        self.kernel_filters || self.event_mask & bit != 0
    }
}

impl AsFd for ProcEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.get_ref().as_fd()
    }
}

impl Drop for ProcEvents {
    fn drop(&mut self) {
        // Lets the kernel stop building events nobody reads (it counts listeners).
        let _ = send_control(
            self.socket.get_ref().as_raw_fd(),
            PROC_CN_MCAST_IGNORE,
            None,
            self.nonce,
        );
    }
}

/// Whether a kernel release string (`uname -r`) is 6.6 or later, where subscriptions can
/// carry an event filter.
pub fn kernel_supports_event_filter(release: &str) -> bool {
    let mut numbers = release
        .split(|character: char| !character.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (6, 6)
}

fn kernel_release() -> Option<String> {
    // SAFETY: uname fills a zeroed utsname.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut names) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = names
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

fn open_socket(receive_buffer_bytes: Option<usize>) -> Result<OwnedFd, ProcEventsError> {
    let socket_error = |operation| move |source| ProcEventsError::Socket { operation, source };
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            NETLINK_CONNECTOR,
        )
    };
    if raw < 0 {
        return Err(socket_error("open a NETLINK_CONNECTOR socket")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(bytes) = receive_buffer_bytes {
        let size = bytes.min(i32::MAX as usize) as libc::c_int;
        if set_int_option(raw, libc::SO_RCVBUFFORCE, size).is_err() {
            set_int_option(raw, libc::SO_RCVBUF, size).map_err(socket_error("set SO_RCVBUF"))?;
        }
    }
    // SAFETY: a zeroed sockaddr_nl is valid; fields are set below.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_pid = 0;
    address.nl_groups = CN_IDX_PROC;
    // SAFETY: `address` is a valid sockaddr_nl of the given length.
    let bound = unsafe {
        libc::bind(
            raw,
            (&address as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(socket_error("bind to CN_IDX_PROC")(
            io::Error::last_os_error(),
        ));
    }
    Ok(socket)
}

fn set_int_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a c_int of the given length.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn send_control(
    fd: RawFd,
    operation: u32,
    event_mask: Option<u32>,
    nonce: u32,
) -> Result<(), ProcEventsError> {
    let message = encode_control(operation, event_mask, nonce, nonce);
    // SAFETY: `message` is a readable buffer of the given length.
    let sent = unsafe { libc::send(fd, message.as_ptr().cast(), message.len(), 0) };
    if sent < 0 {
        return Err(ProcEventsError::Socket {
            operation: "send the subscription",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The socket's netlink port id (unique on the system while the socket is open).
fn local_port(fd: RawFd) -> Result<u32, ProcEventsError> {
    // SAFETY: a zeroed sockaddr_nl is valid; getsockname fills at most `length` bytes.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut length = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let result = unsafe {
        libc::getsockname(
            fd,
            (&mut address as *mut libc::sockaddr_nl).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(ProcEventsError::Socket {
            operation: "read the socket's port id",
            source: io::Error::last_os_error(),
        });
    }
    Ok(address.nl_pid)
}

/// What one `recvmmsg` returned: datagram lengths and whether each came from the kernel.
struct ReceivedBatch {
    count: usize,
    lengths: [usize; MAX_BATCH],
    from_kernel: [bool; MAX_BATCH],
}

fn receive_batch(fd: RawFd, slab: &mut [u8], batch_size: usize) -> io::Result<ReceivedBatch> {
    // The headers point into `slab`; they live on the stack so that `ProcEvents` stays `Send`.
    // SAFETY (zeroed): all-zero iovec, sockaddr_nl and mmsghdr values are valid.
    let mut io_vectors: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut senders: [libc::sockaddr_nl; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let slots = slab.chunks_exact_mut(SLOT_LEN).zip(io_vectors.iter_mut());
    for ((chunk, io_vector), (header, sender)) in slots
        .zip(headers.iter_mut().zip(senders.iter_mut()))
        .take(batch_size)
    {
        *io_vector = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: SLOT_LEN,
        };
        header.msg_hdr.msg_iov = io_vector;
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = (sender as *mut libc::sockaddr_nl).cast();
        header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    }
    // SAFETY: `headers[..batch_size]` describe valid, writable buffers that outlive the call.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            batch_size as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut batch = ReceivedBatch {
        count: received as usize,
        lengths: [0; MAX_BATCH],
        from_kernel: [false; MAX_BATCH],
    };
    let results = batch.lengths.iter_mut().zip(batch.from_kernel.iter_mut());
    for ((length, from_kernel), (header, sender)) in results
        .zip(headers.iter().zip(senders.iter()))
        .take(batch.count)
    {
        *length = (header.msg_len as usize).min(SLOT_LEN);
        *from_kernel = sender.nl_pid == 0;
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {

    #[test]
    fn renames_of_one_thread_coalesce_to_the_last() {
        let comm = |tid: Pid, name: &str| ProcEvent {
            timestamp_ns: 0,
            cpu: 0,
            kind: EventKind::Comm {
                tid,
                pid: tid,
                comm: Comm::from_bytes(name.as_bytes()),
            },
        };
        let exit = |tid: Pid| ProcEvent {
            timestamp_ns: 0,
            cpu: 0,
            kind: EventKind::Exit {
                tid,
                pid: tid,
                exit_code: 0,
                exit_signal: 17,
            },
        };
        let mut events = vec![
            comm(7, "a"),
            comm(8, "x"),
            comm(7, "b"),
            exit(8),
            comm(7, "c"),
        ];
        assert_eq!(coalesce_renames(&mut events), 2);
        assert_eq!(events, vec![comm(8, "x"), exit(8), comm(7, "c")]);
        let mut none: Vec<ProcEvent> = Vec::new();
        assert_eq!(coalesce_renames(&mut none), 0);
    }

    use super::*;

    #[test]
    fn filter_needs_six_point_six() {
        assert!(kernel_supports_event_filter("6.18.44-fc-v657"));
        assert!(kernel_supports_event_filter("6.6.0"));
        assert!(kernel_supports_event_filter("7.3.4+deb13-cloud-amd64"));
        assert!(!kernel_supports_event_filter("6.5.13-generic"));
        assert!(!kernel_supports_event_filter("5.15.0"));
        assert!(!kernel_supports_event_filter("garbage"));
    }
}
