//! The proc connector's message layout, pure: the subscription message canopy sends
//! ([`encode_control`]) and the decoding of one received datagram ([`decode_datagram`]):
//! `nlmsghdr` (16 bytes) + `cn_msg` (20) + `struct proc_event` (`what`, `cpu`, `timestamp_ns`,
//! then the event's union). Unit-tested with hand-built messages.

use super::{event_bits, EventKind, ProcEvent};
use crate::{Comm, Pid};

/// The proc connector's netlink multicast group (and `cn_msg` index).
pub(super) const CN_IDX_PROC: u32 = 1;

const CN_VAL_PROC: u32 = 1;
pub(super) const PROC_CN_MCAST_LISTEN: u32 = 1;
pub(super) const PROC_CN_MCAST_IGNORE: u32 = 2;
const NLMSG_HEADER_LEN: usize = 16;
const CN_MSG_LEN: usize = 20;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;
/// Offset of `struct proc_event` in a datagram (after `nlmsghdr` and `cn_msg`).
const PROC_EVENT_OFFSET: usize = NLMSG_HEADER_LEN + CN_MSG_LEN;
/// Offset of the event's union within `struct proc_event` (`what`, `cpu`, `timestamp_ns`).
const EVENT_DATA_OFFSET: usize = 16;

/// Builds the subscription message: `nlmsghdr` + `cn_msg` + the op (+ the event mask).
/// `nonce` goes into the `cn_msg` sequence and ack fields (the kernel acks with ack + 1).
pub fn encode_control(operation: u32, event_mask: Option<u32>, nonce: u32, port: u32) -> Vec<u8> {
    let payload_len = if event_mask.is_some() { 8 } else { 4 };
    let total = NLMSG_HEADER_LEN + CN_MSG_LEN + payload_len;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE, as the connector expects
    message.extend_from_slice(&0u16.to_ne_bytes());
    message.extend_from_slice(&nonce.to_ne_bytes());
    message.extend_from_slice(&port.to_ne_bytes());
    message.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    message.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    message.extend_from_slice(&nonce.to_ne_bytes()); // seq
    message.extend_from_slice(&nonce.to_ne_bytes()); // ack
    message.extend_from_slice(&(payload_len as u16).to_ne_bytes());
    message.extend_from_slice(&0u16.to_ne_bytes()); // flags
    message.extend_from_slice(&operation.to_ne_bytes());
    if let Some(mask) = event_mask {
        message.extend_from_slice(&mask.to_ne_bytes());
    }
    message
}

/// What one datagram held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A proc event (or an overrun notice).
    Event(ProcEvent),
    /// The kernel's answer to a subscription (`PROC_EVENT_NONE`). Acks are multicast to every
    /// listener; `acknowledgement` (the request's ack + 1) tells whose it is.
    Ack {
        /// 0 on success.
        errno: i32,
        /// The `cn_msg` sequence (the request's on old kernels, a per-CPU counter on new ones).
        sequence: u32,
        /// The request's `cn_msg` ack plus one.
        acknowledgement: u32,
    },
    /// Not a proc connector message, or too short.
    Ignored,
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

/// Decodes one datagram from the connector (pure; unit-tested with hand-built messages).
pub fn decode_datagram(datagram: &[u8]) -> Decoded {
    decode_inner(datagram).unwrap_or(Decoded::Ignored)
}

fn decode_inner(datagram: &[u8]) -> Option<Decoded> {
    let message_type = read_u16(datagram, 4)?;
    match message_type {
        NLMSG_OVERRUN => {
            return Some(Decoded::Event(ProcEvent {
                timestamp_ns: 0,
                cpu: 0,
                kind: EventKind::Overrun,
            }))
        }
        NLMSG_NOOP | NLMSG_ERROR => return Some(Decoded::Ignored),
        _ => {}
    }
    if read_u32(datagram, NLMSG_HEADER_LEN)? != CN_IDX_PROC
        || read_u32(datagram, NLMSG_HEADER_LEN + 4)? != CN_VAL_PROC
    {
        return Some(Decoded::Ignored);
    }
    let event = datagram.get(PROC_EVENT_OFFSET..)?;
    let what = read_u32(event, 0)?;
    let cpu = read_u32(event, 4)?;
    let timestamp_ns = read_u64(event, 8)?;
    let data = event.get(EVENT_DATA_OFFSET..)?;
    let pid_at = |index: usize| read_u32(data, index * 4).map(|value| value as Pid);
    let kind = match what {
        0 => {
            return Some(Decoded::Ack {
                errno: read_u32(data, 0)? as i32,
                sequence: read_u32(datagram, NLMSG_HEADER_LEN + 8)?,
                acknowledgement: read_u32(datagram, NLMSG_HEADER_LEN + 12)?,
            })
        }
        event_bits::FORK => EventKind::Fork {
            parent_tid: pid_at(0)?,
            parent_pid: pid_at(1)?,
            child_tid: pid_at(2)?,
            child_pid: pid_at(3)?,
        },
        event_bits::EXEC => EventKind::Exec {
            tid: pid_at(0)?,
            pid: pid_at(1)?,
        },
        event_bits::COMM => EventKind::Comm {
            tid: pid_at(0)?,
            pid: pid_at(1)?,
            comm: Comm::from_bytes(data.get(8..24)?),
        },
        event_bits::EXIT => EventKind::Exit {
            tid: pid_at(0)?,
            pid: pid_at(1)?,
            exit_code: read_u32(data, 8)?,
            exit_signal: read_u32(data, 12)?,
        },
        other => EventKind::Other { what: other },
    };
    Some(Decoded::Event(ProcEvent {
        timestamp_ns,
        cpu,
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram as the kernel sends it: nlmsghdr, cn_msg, proc_event header, `data`.
    fn datagram(what: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let total = (PROC_EVENT_OFFSET + EVENT_DATA_OFFSET + data.len()) as u32;
        bytes.extend_from_slice(&total.to_ne_bytes());
        bytes.extend_from_slice(&3u16.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        bytes.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        bytes.extend_from_slice(&5u32.to_ne_bytes()); // cn_msg seq
        bytes.extend_from_slice(&6u32.to_ne_bytes()); // cn_msg ack
        bytes.extend_from_slice(&((EVENT_DATA_OFFSET + data.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&[0; 2]);
        bytes.extend_from_slice(&what.to_ne_bytes());
        bytes.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        bytes.extend_from_slice(&777u64.to_ne_bytes()); // timestamp
        bytes.extend_from_slice(data);
        bytes
    }

    fn words(values: &[u32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_ne_bytes())
            .collect()
    }

    #[test]
    fn decodes_fork_exec_comm_exit() {
        let fork = decode_datagram(&datagram(event_bits::FORK, &words(&[10, 10, 11, 10])));
        assert_eq!(
            fork,
            Decoded::Event(ProcEvent {
                timestamp_ns: 777,
                cpu: 1,
                kind: EventKind::Fork {
                    parent_tid: 10,
                    parent_pid: 10,
                    child_tid: 11,
                    child_pid: 10
                }
            })
        );
        let Decoded::Event(exec) = decode_datagram(&datagram(event_bits::EXEC, &words(&[12, 12])))
        else {
            panic!("exec not decoded")
        };
        assert_eq!(exec.kind, EventKind::Exec { tid: 12, pid: 12 });
        let mut comm_data = words(&[13, 12]);
        comm_data.extend_from_slice(b"worker-7\0\0\0\0\0\0\0\0");
        let Decoded::Event(comm) = decode_datagram(&datagram(event_bits::COMM, &comm_data)) else {
            panic!("comm not decoded")
        };
        assert_eq!(
            comm.kind,
            EventKind::Comm {
                tid: 13,
                pid: 12,
                comm: Comm::from("worker-7")
            }
        );
        let Decoded::Event(exit) = decode_datagram(&datagram(
            event_bits::EXIT,
            &words(&[13, 12, 256, 17, 1, 1]),
        )) else {
            panic!("exit not decoded")
        };
        assert_eq!(
            exit.kind,
            EventKind::Exit {
                tid: 13,
                pid: 12,
                exit_code: 256,
                exit_signal: 17
            }
        );
    }

    #[test]
    fn ack_other_and_garbage() {
        assert_eq!(
            decode_datagram(&datagram(0, &words(&[0]))),
            Decoded::Ack {
                errno: 0,
                sequence: 5,
                acknowledgement: 6
            }
        );
        assert_eq!(
            decode_datagram(&datagram(0, &words(&[22]))),
            Decoded::Ack {
                errno: 22,
                sequence: 5,
                acknowledgement: 6
            }
        );
        let Decoded::Event(uid) =
            decode_datagram(&datagram(event_bits::UID, &words(&[1, 1, 0, 0])))
        else {
            panic!("uid not decoded")
        };
        assert_eq!(
            uid.kind,
            EventKind::Other {
                what: event_bits::UID
            }
        );
        assert_eq!(decode_datagram(&[1, 2, 3]), Decoded::Ignored);
        let mut truncated = datagram(event_bits::COMM, &words(&[1, 1]));
        truncated.truncate(truncated.len() - 2);
        assert_eq!(decode_datagram(&truncated), Decoded::Ignored);
        let mut other_connector = datagram(event_bits::EXEC, &words(&[1, 1]));
        other_connector[NLMSG_HEADER_LEN] = 9;
        assert_eq!(decode_datagram(&other_connector), Decoded::Ignored);
    }

    #[test]
    fn subscription_message_layout() {
        let filtered = encode_control(PROC_CN_MCAST_LISTEN, Some(0x8000_0203), 41, 99);
        assert_eq!(filtered.len(), 16 + 20 + 8);
        assert_eq!(read_u32(&filtered, 0), Some(44));
        assert_eq!(read_u16(&filtered, 4), Some(3));
        assert_eq!(read_u32(&filtered, 12), Some(99));
        assert_eq!(read_u32(&filtered, 16), Some(CN_IDX_PROC));
        assert_eq!(
            read_u32(&filtered, 24),
            Some(41),
            "cn_msg seq carries the nonce"
        );
        assert_eq!(
            read_u32(&filtered, 28),
            Some(41),
            "cn_msg ack carries the nonce"
        );
        assert_eq!(read_u16(&filtered, 32), Some(8));
        assert_eq!(read_u32(&filtered, 36), Some(PROC_CN_MCAST_LISTEN));
        assert_eq!(read_u32(&filtered, 40), Some(0x8000_0203));
        let plain = encode_control(PROC_CN_MCAST_IGNORE, None, 0, 99);
        assert_eq!(plain.len(), 40);
        assert_eq!(read_u16(&plain, 32), Some(4));
    }
}
