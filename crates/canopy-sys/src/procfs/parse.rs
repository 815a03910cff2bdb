// SPDX-License-Identifier: GPL-2.0-only
//! What the `/proc` files canopy reads hold, and their parsers: pure functions over the bytes
//! [`super::ProcFs`] read, each with its unit tests (a `stat` line whose comm holds spaces and
//! parentheses, the `0::` line of a hybrid host's `cgroup` file, the `Uid:` line of `status`).
//! Example: `4242 (Web Content) S 4200 ...` parses to id 4242, comm `Web Content`, parent 4200.

use super::PF_KTHREAD;
use crate::{Comm, Pid};

/// The fields canopy uses from `/proc/PID[/task/TID]/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStat {
    /// Field 1: the id this stat file describes (the tid for a thread's stat).
    pub id: Pid,
    /// Field 2: the command name (thread name for a thread's stat).
    pub comm: Comm,
    /// Field 3: the state letter (`R`, `S`, `D`, `Z`, ...).
    pub state: u8,
    /// Field 4: the parent's process id (0 for init and kthreadd).
    pub parent_pid: Pid,
    /// Field 9: the kernel's `PF_*` flags.
    pub flags: u32,
    /// Field 19: the nice value.
    pub nice: i32,
    /// Field 20: the number of threads in the process.
    pub thread_count: u32,
    /// Field 22: the start time in clock ticks after boot (tells a reused pid apart).
    pub start_time_ticks: u64,
    /// Field 39: the CPU the task last ran on.
    pub last_cpu: u32,
    /// Field 40: the real-time priority (0 for fair-class tasks).
    pub realtime_priority: u32,
    /// Field 41: the scheduling policy (`SCHED_*` number).
    pub policy: u32,
}

impl TaskStat {
    /// Whether the task is a kernel thread (`PF_KTHREAD`, not a pid range guess).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// The scheduling policy as a typed value.
    pub fn scheduling_policy(&self) -> crate::sched::SchedPolicy {
        crate::sched::SchedPolicy::from_raw(self.policy)
    }
}

/// A process's command line: the NUL-separated bytes of `/proc/PID/cmdline`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    raw: Vec<u8>,
}

impl Cmdline {
    /// A command line from the raw bytes of `/proc/PID/cmdline`.
    pub fn from_raw(raw: Vec<u8>) -> Cmdline {
        Cmdline { raw }
    }

    /// The arguments, `argv[0]` first, as bytes (empty for kernel threads and zombies).
    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        let trimmed = self.raw.strip_suffix(b"\0").unwrap_or(&self.raw);
        trimmed
            .split(|&byte| byte == 0)
            .filter(move |_| !trimmed.is_empty())
    }

    /// The arguments as strings, invalid UTF-8 replaced.
    pub fn to_strings(&self) -> Vec<String> {
        self.args()
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    /// The arguments joined by single spaces, invalid UTF-8 replaced (what `cmdline` rules
    /// match on). Example: `/usr/bin/foo\0--bar\0` is `/usr/bin/foo --bar`.
    pub fn joined(&self) -> String {
        let mut joined = String::with_capacity(self.raw.len());
        for (index, arg) in self.args().enumerate() {
            if index > 0 {
                joined.push(' ');
            }
            joined.push_str(&String::from_utf8_lossy(arg));
        }
        joined
    }

    /// Whether the command line is empty.
    pub fn is_empty(&self) -> bool {
        self.args().next().is_none()
    }
}

/// A `/proc` directory name that is a pid (all digits, no leading `+`/`-`).
pub(super) fn parse_pid_name(name: &[u8]) -> Option<Pid> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// Parses a `stat` line. The comm (field 2) may hold spaces, parentheses and even newlines,
/// so it spans from the first `(` to the *last* `)`; the numeric fields follow that.
pub fn parse_stat(content: &[u8]) -> Result<TaskStat, &'static str> {
    let open = content
        .iter()
        .position(|&byte| byte == b'(')
        .ok_or("no '(' before the comm")?;
    let close = content
        .iter()
        .rposition(|&byte| byte == b')')
        .ok_or("no ')' after the comm")?;
    if close < open {
        return Err("')' before '('");
    }
    // open < close, so each part exists (the fallbacks are never taken).
    let pid_field = content.get(..open).unwrap_or_default();
    let comm_field = content.get(open + 1..close).unwrap_or_default();
    let after_comm = content.get(close + 1..).unwrap_or_default();
    let id = parse_number::<Pid>(pid_field.trim_ascii()).ok_or("bad pid field")?;
    let comm = Comm::from_bytes(comm_field);
    let rest = std::str::from_utf8(after_comm).map_err(|_| "fields after comm not UTF-8")?;
    // Fields 3 (state) to 41 (policy) follow the comm; later fields are not needed.
    let mut fields = [""; 39];
    let mut count = 0;
    for (slot, token) in fields.iter_mut().zip(rest.split_ascii_whitespace()) {
        *slot = token;
        count += 1;
    }
    if count < fields.len() {
        return Err("too few fields");
    }
    // Every field 3..=41 is present (checked above).
    let field = |number: usize| fields.get(number - 3).copied().unwrap_or_default();
    let state = *field(3).as_bytes().first().ok_or("empty state")?;
    let parent_pid = field(4).parse().map_err(|_| "bad ppid (field 4)")?;
    let flags = field(9).parse().map_err(|_| "bad flags (field 9)")?;
    let nice = field(19).parse().map_err(|_| "bad nice (field 19)")?;
    let thread_count = field(20)
        .parse()
        .map_err(|_| "bad num_threads (field 20)")?;
    let start_time_ticks = field(22).parse().map_err(|_| "bad starttime (field 22)")?;
    let last_cpu = field(39).parse().map_err(|_| "bad processor (field 39)")?;
    let realtime_priority = field(40)
        .parse()
        .map_err(|_| "bad rt_priority (field 40)")?;
    let policy = field(41).parse().map_err(|_| "bad policy (field 41)")?;
    Ok(TaskStat {
        id,
        comm,
        state,
        parent_pid,
        flags,
        nice,
        thread_count,
        start_time_ticks,
        last_cpu,
        realtime_priority,
        policy,
    })
}

/// The cgroup v2 path from a `/proc/PID/cgroup` file (the `0::PATH` line); `None` if absent.
/// The path may itself contain `:`.
pub fn parse_cgroup_v2_path(content: &[u8]) -> Result<Option<&str>, &'static str> {
    let text = std::str::from_utf8(content).map_err(|_| "not UTF-8")?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("a line without two ':'");
        };
        if hierarchy == "0" && controllers.is_empty() {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The real uid from `/proc/PID/status` (`Uid:\treal\teffective\tsaved\tfs`).
pub fn parse_status_real_uid(content: &[u8]) -> Result<u32, &'static str> {
    status_first_number(content, "Uid:").ok_or("no or bad Uid: line")
}

/// The uids a task runs with, from the `Uid:` line of its `/proc/ID/status`. Credentials belong
/// to each thread: one thread may `setresuid` alone (a raw syscall; glibc changes them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskUids {
    /// Real uid.
    pub real: u32,
    /// Effective uid.
    pub effective: u32,
    /// Saved set-user-ID.
    pub saved: u32,
    /// Filesystem uid.
    pub filesystem: u32,
}

impl TaskUids {
    /// The one uid the task runs as, when all four are that uid; `None` while it holds two
    /// identities (a setuid program run by a user, a server between `setresuid` calls).
    /// Example: `Uid: 1000 0 0 0` (sudo run by uid 1000) has no sole owner.
    pub fn sole(&self) -> Option<u32> {
        let uid = self.real;
        (self.effective == uid && self.saved == uid && self.filesystem == uid).then_some(uid)
    }
}

/// The four uids from `/proc/ID/status` (`Uid:\treal\teffective\tsaved\tfs`).
pub fn parse_status_uids(content: &[u8]) -> Result<TaskUids, &'static str> {
    const BAD: &str = "no or bad Uid: line";
    let text = std::str::from_utf8(content).map_err(|_| BAD)?;
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .ok_or(BAD)?;
    let mut fields = line.split_ascii_whitespace().map(str::parse::<u32>);
    let mut next = || fields.next().and_then(Result::ok).ok_or(BAD);
    Ok(TaskUids {
        real: next()?,
        effective: next()?,
        saved: next()?,
        filesystem: next()?,
    })
}

/// The thread group id from `/proc/TID/status` (the `Tgid:` line).
pub fn parse_status_tgid(content: &[u8]) -> Result<Pid, &'static str> {
    status_first_number(content, "Tgid:").ok_or("no or bad Tgid: line")
}

/// The first number after `field` on its line of a `/proc/PID/status` file.
fn status_first_number<T: std::str::FromStr>(content: &[u8], field: &str) -> Option<T> {
    let text = std::str::from_utf8(content).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

fn parse_number<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real stat line of a user thread (kernel 6.18), with its comm replaced.
    fn stat_line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 4200 4242 4200 34816 4242 4194560 1339 0 0 0 3 1 0 0 20 0 3 0 \
             987654 10063872 1024 18446744073709551615 1 1 0 0 0 0 0 3670020 1266777851 0 0 0 \
             17 1 0 3 0 0 0 0 0 0 0 0 0 0 0\n"
        )
    }

    #[test]
    fn stat_plain_comm() {
        let stat = parse_stat(stat_line("bash").as_bytes()).unwrap();
        assert_eq!(stat.id, 4242);
        assert_eq!(stat.comm, "bash");
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.parent_pid, 4200);
        assert_eq!(stat.flags, 4194560);
        assert!(!stat.is_kernel_thread());
        assert_eq!(stat.nice, 0);
        assert_eq!(stat.thread_count, 3);
        assert_eq!(stat.start_time_ticks, 987654);
        assert_eq!(stat.last_cpu, 1);
        assert_eq!(stat.realtime_priority, 0);
        assert_eq!(stat.policy, 3);
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        for comm in ["Web Content", "a) R 1 2 (b", "))", "((", ") (", "x\ny", ""] {
            let stat = parse_stat(stat_line(comm).as_bytes()).unwrap();
            assert_eq!(stat.comm, comm, "comm {comm:?}");
            assert_eq!(stat.parent_pid, 4200, "comm {comm:?}");
            assert_eq!(stat.policy, 3, "comm {comm:?}");
        }
    }

    #[test]
    fn stat_kernel_thread_and_negative_nice() {
        let line = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 -5 1 0 5 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
        let stat = parse_stat(line.as_bytes()).unwrap();
        assert!(stat.is_kernel_thread());
        assert_eq!(stat.nice, -5);
        assert_eq!(stat.parent_pid, 0);
    }

    #[test]
    fn stat_truncated_or_garbled_is_an_error() {
        assert_eq!(parse_stat(b"12 (x) S 1 2 3").unwrap_err(), "too few fields");
        assert!(parse_stat(b"12 x S 1").is_err());
        assert!(parse_stat(b"zz (x) S 1 2 3 4 5 6").is_err());
        assert_eq!(parse_stat(b"1 )x( S").unwrap_err(), "')' before '('");
    }

    #[test]
    fn cgroup_v2_line_on_hybrid_and_unified_hosts() {
        let hybrid = b"9:name=systemd:/\n4:memory:/x\n1:cpu:/\n0::/user.slice/app-a:b.scope\n";
        assert_eq!(
            parse_cgroup_v2_path(hybrid).unwrap(),
            Some("/user.slice/app-a:b.scope")
        );
        assert_eq!(parse_cgroup_v2_path(b"0::/\n").unwrap(), Some("/"));
        assert_eq!(parse_cgroup_v2_path(b"1:cpu:/\n").unwrap(), None);
        assert!(parse_cgroup_v2_path(b"garbage\n").is_err());
    }

    #[test]
    fn status_real_uid_is_the_first_uid_field() {
        let status = b"Name:\tsudo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_status_real_uid(status).unwrap(), 1000);
        assert!(parse_status_real_uid(b"Name:\tx\n").is_err());
    }

    #[test]
    fn status_uids_are_the_four_uid_fields_and_sole_only_when_equal() {
        let sudo = b"Name:\tsudo\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        let uids = parse_status_uids(sudo).unwrap();
        assert_eq!(
            uids,
            TaskUids {
                real: 1000,
                effective: 0,
                saved: 0,
                filesystem: 0
            }
        );
        assert_eq!(uids.sole(), None);
        let plain = parse_status_uids(b"Uid:\t1000\t1000\t1000\t1000\n").unwrap();
        assert_eq!(plain.sole(), Some(1000));
        assert!(parse_status_uids(b"Uid:\t1000\t1000\n").is_err());
        assert!(parse_status_uids(b"Name:\tx\n").is_err());
    }

    #[test]
    fn cmdline_splits_at_nul() {
        let cmdline = Cmdline::from_raw(b"/usr/bin/foo\0--bar\0\0baz\0".to_vec());
        assert_eq!(cmdline.to_strings(), ["/usr/bin/foo", "--bar", "", "baz"]);
        assert_eq!(cmdline.joined(), "/usr/bin/foo --bar  baz");
        assert!(Cmdline::from_raw(Vec::new()).is_empty());
        assert_eq!(Cmdline::from_raw(Vec::new()).joined(), "");
        assert_eq!(
            Cmdline::from_raw(b"a\xff\0b".to_vec()).joined(),
            "a\u{fffd} b"
        );
        // A process that rewrote its argv without a trailing NUL.
        assert_eq!(
            Cmdline::from_raw(b"nginx: worker".to_vec()).to_strings(),
            ["nginx: worker"]
        );
    }

    #[test]
    fn pid_names() {
        assert_eq!(parse_pid_name(b"123"), Some(123));
        assert_eq!(parse_pid_name(b"self"), None);
        assert_eq!(parse_pid_name(b"+1"), None);
        assert_eq!(parse_pid_name(b""), None);
    }
}
