// SPDX-License-Identifier: GPL-2.0-only
//! Why a scheduler stopped: the `struct canopy_exit_info` each canopy scheduler fills in
//! ops.exit, decoded (exit kind by its kernel name, exit code split into the user code,
//! reason and action fields) and the restart decision.
use std::collections::HashMap;
use std::fmt;

use super::bpf_bytes::c_string;
use super::bpf_intf::canopy_exit_info;
use super::kernel::EXIT_KIND_NAME_PREFIX;

/// Exit code layout (kernel internal.h): user [31:0], reason [47:32], action [63:48].
const ECODE_USER_MASK: i64 = 0xffff_ffff;
const ECODE_REASON_SHIFT: u32 = 32;
const ECODE_ACTION_SHIFT: u32 = 48;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExitReport {
    /// `enum scx_exit_kind` value.
    pub kind: i32,
    /// Its kernel name (e.g. `SCX_EXIT_UNREG`), when the kernel's BTF names it.
    pub kind_name: String,
    pub exit_code: i64,
    pub exit_cpu: i32,
    pub reason: String,
    pub msg: String,
    pub dump: String,
}

impl ExitReport {
    /// Decodes the exit record; `None` while the scheduler is still running (kind 0).
    pub fn from_record(record: &canopy_exit_info, enums: &HashMap<String, u64>) -> Option<Self> {
        // SAFETY: `kind` is a plain i32 in mmapped map memory the kernel writes last.
        let kind = unsafe { std::ptr::read_volatile(&record.kind) };
        if kind == 0 {
            return None;
        }
        let kind_name = enums
            .iter()
            .find_map(|(key, value)| {
                let name = key.strip_prefix(EXIT_KIND_NAME_PREFIX)?;
                (*value == kind as u32 as u64).then(|| name.to_string())
            })
            .unwrap_or_else(|| format!("exit kind {kind}"));
        Some(Self {
            kind,
            kind_name,
            exit_code: record.exit_code,
            exit_cpu: record.exit_cpu,
            reason: c_string(&record.reason),
            msg: c_string(&record.msg),
            dump: c_string(&record.dump),
        })
    }

    #[allow(dead_code)] // part of the decoded exit code; shown by callers that need it
    pub fn user_code(&self) -> u32 {
        (self.exit_code & ECODE_USER_MASK) as u32
    }

    /// The kernel's reason bits (1 = hotplug, 2 = cgroup offline).
    pub fn reason_code(&self) -> u16 {
        ((self.exit_code as u64) >> ECODE_REASON_SHIFT) as u16
    }

    /// The kernel's action bits (1 = restart).
    pub fn action_code(&self) -> u16 {
        ((self.exit_code as u64) >> ECODE_ACTION_SHIFT) as u16
    }

    /// The kernel asks userspace to load the scheduler again (e.g. after CPU hotplug).
    pub fn should_restart(&self) -> bool {
        self.action_code() & 1 != 0
    }

    /// Ended by an error (kinds >= 1024), not by an orderly unregistration.
    #[allow(dead_code)]
    pub fn is_error(&self) -> bool {
        self.kind >= 1024
    }
}

impl fmt::Display for ExitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind_name, self.reason)?;
        if !self.msg.is_empty() {
            write!(f, ": {}", self.msg)?;
        }
        let reason = match self.reason_code() {
            0 => String::new(),
            1 => " [reason: cpu hotplug]".into(),
            2 => " [reason: cgroup went offline]".into(),
            other => format!(" [reason {other}]"),
        };
        write!(f, "{reason}")?;
        if self.should_restart() {
            write!(f, " [action: restart]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(code: i64) -> ExitReport {
        ExitReport {
            kind: 64,
            kind_name: "SCX_EXIT_UNREG".into(),
            exit_code: code,
            exit_cpu: 0,
            reason: String::new(),
            msg: String::new(),
            dump: String::new(),
        }
    }

    fn record(kind: i32, exit_code: i64, msg: &str) -> canopy_exit_info {
        let mut record = canopy_exit_info {
            kind,
            exit_code,
            ..Default::default()
        };
        for (dst, src) in record.msg.iter_mut().zip(msg.bytes()) {
            *dst = src as std::os::raw::c_char;
        }
        record
    }

    fn exit_kinds() -> HashMap<String, u64> {
        [("SCX_EXIT_UNREG_BPF", 65u64), ("SCX_EXIT_UNREG_KERN", 66)]
            .into_iter()
            .map(|(name, value)| (format!("{EXIT_KIND_NAME_PREFIX}{name}"), value))
            .collect()
    }

    #[test]
    fn a_running_scheduler_has_no_report() {
        assert!(ExitReport::from_record(&record(0, 0, ""), &exit_kinds()).is_none());
    }

    #[test]
    fn a_restart_request_decodes_with_kind_name_and_action() {
        let restart = 1i64 << 48;
        let report =
            ExitReport::from_record(&record(65, restart, "asking again"), &exit_kinds()).unwrap();
        assert_eq!(report.kind_name, "SCX_EXIT_UNREG_BPF");
        assert_eq!(report.msg, "asking again");
        assert_eq!(report.action_code(), 1);
        assert!(report.should_restart());
        assert!(!report.is_error());
        assert!(
            report.to_string().ends_with("[action: restart]"),
            "{report}"
        );

        // the kernel's own request after a hotplug: reason and action together
        let hotplug =
            ExitReport::from_record(&record(66, restart | (1 << 32), ""), &exit_kinds()).unwrap();
        assert!(hotplug.should_restart());
        assert!(
            hotplug
                .to_string()
                .ends_with("[reason: cpu hotplug] [action: restart]"),
            "{hotplug}"
        );
    }

    #[test]
    fn exits_without_the_action_bit_are_not_restarted() {
        for code in [0, 7, 2 << 32, 2 << 48] {
            let report = ExitReport::from_record(&record(1025, code, ""), &exit_kinds()).unwrap();
            assert!(!report.should_restart(), "{code:#x}");
            assert!(report.is_error());
            assert_eq!(report.kind_name, "exit kind 1025");
        }
    }

    #[test]
    fn exit_code_fields_decode() {
        let r = report((1 << 48) | (1 << 32) | 7);
        assert_eq!(r.user_code(), 7);
        assert_eq!(r.reason_code(), 1);
        assert!(r.should_restart());
        assert!(!report(2 << 32).should_restart());
        assert_eq!(report(2 << 32).reason_code(), 2);
    }
}
