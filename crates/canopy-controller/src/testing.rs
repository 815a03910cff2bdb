//! A small hand-built [`PolicyPlan`] for unit tests, host tests and the benchmark, so the
//! controller can be exercised without the policy compiler. Its clamp follows the documented
//! semantics (classes ordered; effective = requested raised to the floor and lowered to the
//! ceiling of the group's current state). Production always uses the compiled Plan.

use std::sync::Arc;
use std::time::Duration;

use crate::policy_port::*;

/// A rule: process comm glob → class, thread comm globs → classes, inheritance.
#[derive(Debug, Clone)]
pub struct TestRule {
    /// Rule name.
    pub name: String,
    /// Glob on the process comm.
    pub comm: String,
    /// Class index.
    pub class: u8,
    /// (thread comm glob, class index).
    pub threads: Vec<(String, u8)>,
    /// Children inherit.
    pub inherit: bool,
}

/// A state of a test group.
#[derive(Debug, Clone)]
pub struct TestState {
    /// Name.
    pub name: String,
    /// Ceiling class index.
    pub ceiling: Option<u8>,
    /// User-settable.
    pub user_settable: bool,
    /// cpu.weight in this state.
    pub weight: Option<u32>,
    /// Delay before the state applies.
    pub after: Duration,
}

/// A group: cgroup glob, base ceiling/floor, states, focus handling.
#[derive(Debug, Clone)]
pub struct TestGroup {
    /// Name.
    pub name: String,
    /// Glob on the cgroup path.
    pub cgroup: String,
    /// Base ceiling.
    pub ceiling: Option<u8>,
    /// Base floor.
    pub floor: Option<u8>,
    /// Named states.
    pub states: Vec<TestState>,
    /// Whether the xattr focus signal drives this group (`focused`/`unfocused` states).
    pub focus: bool,
    /// The state the group starts in (the policy's `default_state`).
    pub default_state: Option<String>,
}

/// The test plan.
#[derive(Debug, Clone)]
pub struct TestPlan {
    /// Classes in order, least important first.
    pub classes: Vec<ClassParams>,
    /// Rules, first match wins.
    pub rules: Vec<TestRule>,
    /// Groups, first match wins.
    pub groups: Vec<TestGroup>,
    /// Default class index.
    pub default_class: Option<u8>,
    /// A tag to tell plans apart in `hash`.
    pub tag: String,
    /// The policy's `leave_kernel_threads = false`.
    pub manage_kernel_threads: bool,
    /// The policy's `leave_realtime = false`.
    pub manage_realtime: bool,
    /// Whether a rule matches on the command line (the source reads it only then).
    pub uses_cmdline: bool,
}

/// Class indices of [`TestPlan::classes_schedqos`]. Ids follow the compiled plan's convention
/// (and the BPF schedulers'): the policy's order, highest class first.
pub mod class {
    /// USER_INTERACTIVE.
    pub const USER_INTERACTIVE: u8 = 0;
    /// USER_INITIATED.
    pub const USER_INITIATED: u8 = 1;
    /// DEFAULT.
    pub const DEFAULT: u8 = 2;
    /// UTILITY.
    pub const UTILITY: u8 = 3;
    /// BACKGROUND.
    pub const BACKGROUND: u8 = 4;
}

/// fnmatch-style glob with `*` and `?` (no classes), `*` crossing `/`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl TestPlan {
    /// schedqos's five classes (policy, nice, slice, uclamp_max).
    pub fn classes_schedqos() -> Vec<ClassParams> {
        let c = |name: &str, id: u32, policy, nice, ms: u64, umax| ClassParams {
            name: Arc::from(name),
            scx_id: id,
            policy,
            nice,
            slice_ns: ms * 1_000_000,
            uclamp_min: 0,
            uclamp_max: umax,
        };
        vec![
            c("USER_INTERACTIVE", 0, FairPolicy::Normal, -4, 8, 1024),
            c("USER_INITIATED", 1, FairPolicy::Normal, -2, 12, 768),
            c("DEFAULT", 2, FairPolicy::Batch, 2, 16, 512),
            c("UTILITY", 3, FairPolicy::Batch, 2, 16, 512),
            c("BACKGROUND", 4, FairPolicy::Batch, 4, 20, 256),
        ]
    }

    /// An empty plan with the five classes and no default class.
    pub fn empty() -> Self {
        TestPlan {
            classes: Self::classes_schedqos(),
            rules: vec![],
            groups: vec![],
            default_class: None,
            tag: "empty".into(),
            manage_kernel_threads: false,
            manage_realtime: false,
            uses_cmdline: true,
        }
    }

    /// A desktop-like plan: app scopes with focused/unfocused/minimized/locked states.
    pub fn desktop() -> Self {
        let mut p = Self::empty();
        p.tag = "desktop".into();
        p.rules.push(TestRule {
            name: "player".into(),
            comm: "player".into(),
            class: class::USER_INITIATED,
            threads: vec![
                ("audio*".into(), class::USER_INTERACTIVE),
                ("indexer*".into(), class::BACKGROUND),
            ],
            inherit: false,
        });
        p.rules.push(TestRule {
            name: "wine".into(),
            comm: "wine*".into(),
            class: class::USER_INTERACTIVE,
            threads: vec![],
            inherit: true,
        });
        p.groups.push(TestGroup {
            name: "apps".into(),
            cgroup: "user.slice/user-*.slice/user@*.service/app.slice/*".into(),
            ceiling: None,
            floor: None,
            states: vec![
                TestState {
                    name: "focused".into(),
                    ceiling: None,
                    user_settable: true,
                    weight: Some(200),
                    after: Duration::ZERO,
                },
                TestState {
                    name: "unfocused".into(),
                    ceiling: Some(class::UTILITY),
                    user_settable: true,
                    weight: Some(100),
                    after: Duration::from_secs(30),
                },
                TestState {
                    name: "minimized".into(),
                    ceiling: Some(class::BACKGROUND),
                    user_settable: true,
                    weight: Some(20),
                    after: Duration::ZERO,
                },
                TestState {
                    name: "locked".into(),
                    ceiling: Some(class::BACKGROUND),
                    user_settable: false,
                    weight: None,
                    after: Duration::ZERO,
                },
            ],
            focus: true,
            default_state: None,
        });
        p
    }

    fn group(&self, g: GroupId) -> &TestGroup {
        &self.groups[g.0 as usize]
    }

    fn state<'a>(&'a self, g: GroupId, state: Option<&str>) -> Option<&'a TestState> {
        state.and_then(|s| self.group(g).states.iter().find(|st| st.name == s))
    }
}

impl PolicyPlan for TestPlan {
    fn hash(&self) -> String {
        format!("test:{}", self.tag)
    }
    fn default_class(&self) -> Option<ClassId> {
        self.default_class.map(ClassId)
    }
    fn class_params(&self, class: ClassId) -> &ClassParams {
        &self.classes[class.0 as usize]
    }
    fn class_by_name(&self, name: &str) -> Option<ClassId> {
        self.classes
            .iter()
            .position(|c| &*c.name == name)
            .map(|i| ClassId(i as u8))
    }
    fn match_task(&self, facts: &ThreadFacts) -> Option<RuleMatch> {
        let rule = self
            .rules
            .iter()
            .find(|r| glob_match(&r.comm, &facts.process.comm))?;
        let thread = rule
            .threads
            .iter()
            .find(|(g, _)| glob_match(g, &facts.comm));
        Some(RuleMatch {
            rule: Arc::from(rule.name.as_str()),
            class: ClassId(thread.map(|t| t.1).unwrap_or(rule.class)),
            thread_rule: thread.map(|t| Arc::from(t.0.as_str())),
            inherit: rule.inherit,
        })
    }
    fn group_for_cgroup(&self, cgroup: &str) -> Option<GroupId> {
        self.groups
            .iter()
            .position(|g| glob_match(&g.cgroup, cgroup))
            .map(|i| GroupId(i as u32))
    }
    fn group_name(&self, group: GroupId) -> Arc<str> {
        Arc::from(self.group(group).name.as_str())
    }
    fn effective_class(
        &self,
        requested: ClassId,
        group: Option<GroupId>,
        state: Option<&str>,
    ) -> Clamp {
        let Some(g) = group else {
            return Clamp {
                class: requested,
                reason: ClampReason::Unclamped,
            };
        };
        let st = self.state(g, state);
        let ceiling = st.and_then(|s| s.ceiling).or(self.group(g).ceiling);
        let floor = self.group(g).floor;
        if let Some(c) = ceiling {
            if requested.0 < c {
                return Clamp {
                    class: ClassId(c),
                    reason: ClampReason::Ceiling,
                };
            }
        }
        if let Some(f) = floor {
            if requested.0 > f {
                return Clamp {
                    class: ClassId(f),
                    reason: ClampReason::Floor,
                };
            }
        }
        Clamp {
            class: requested,
            reason: ClampReason::Unclamped,
        }
    }
    fn state_info(&self, group: GroupId, state: &str) -> Option<StateInfo> {
        self.group(group)
            .states
            .iter()
            .find(|s| s.name == state)
            .map(|s| StateInfo {
                user_settable: s.user_settable,
                after: s.after,
            })
    }
    fn focus_states(&self, group: GroupId) -> Option<FocusStates> {
        let g = self.group(group);
        let has = |n: &str| g.states.iter().any(|s| s.name == n).then(|| n.to_string());
        g.focus.then(|| FocusStates {
            focused: has("focused"),
            unfocused: has("unfocused"),
        })
    }
    fn default_state(&self, group: GroupId) -> Option<String> {
        self.group(group).default_state.clone()
    }
    fn group_knobs(&self, group: GroupId, state: Option<&str>) -> GroupKnobs {
        GroupKnobs {
            weight: self.state(group, state).and_then(|s| s.weight),
            ..Default::default()
        }
    }
    fn scx_group_policy(&self, group: GroupId, state: Option<&str>) -> ScxGroupPolicy {
        let idx = state
            .and_then(|s| self.group(group).states.iter().position(|st| st.name == s))
            .map(|i| i as u32 + 1)
            .unwrap_or(0);
        ScxGroupPolicy {
            weight: self.group_knobs(group, state).weight,
            guarantee_pct: 0,
            cap_pct: 0,
            floor: self.group(group).floor.map(ClassId),
            ceiling: self
                .state(group, state)
                .and_then(|s| s.ceiling)
                .or(self.group(group).ceiling)
                .map(ClassId),
            state: idx,
        }
    }
    fn manage_kernel_threads(&self) -> bool {
        self.manage_kernel_threads
    }
    fn manage_realtime(&self) -> bool {
        self.manage_realtime
    }
    fn uses_cmdline(&self) -> bool {
        self.uses_cmdline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("a*", "abc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("user.slice/*/x", "user.slice/a/b/x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a*d", "abc"));
    }
}

/// An in-memory [`TaskSource`](crate::backend::TaskSource): processes and threads set by tests.
#[derive(Debug, Default, Clone)]
pub struct FakeSource {
    /// tgid → facts.
    pub processes: std::collections::HashMap<u32, ProcessFacts>,
    /// tid → (tgid, comm, sched policy).
    pub threads: std::collections::HashMap<u32, (u32, String, i32)>,
    /// tid → start time (clock ticks after boot); 0 when not set.
    pub starts: std::collections::HashMap<u32, u64>,
    /// Whether command lines are left out of the facts (the controller's plan has no use
    /// for them, [`TaskSource::read_cmdlines`](crate::backend::TaskSource::read_cmdlines)).
    pub cmdlines_skipped: bool,
    /// How many times all of a process's facts were read, and its command line alone.
    pub facts_reads: usize,
    /// See `facts_reads`.
    pub cmdline_reads: usize,
}

impl FakeSource {
    /// Adds a process with its leader thread.
    pub fn spawn(&mut self, tgid: u32, comm: &str, cgroup: &str) {
        self.processes.insert(
            tgid,
            ProcessFacts {
                tgid,
                comm: comm.into(),
                cgroup: cgroup.into(),
                uid: 1000,
                ..Default::default()
            },
        );
        self.threads.insert(tgid, (tgid, comm.into(), 0));
    }
    /// Adds a thread.
    pub fn thread(&mut self, tgid: u32, tid: u32, comm: &str) {
        self.threads.insert(tid, (tgid, comm.into(), 0));
    }
    /// Renames a thread (and the process when it is the leader).
    pub fn rename(&mut self, tid: u32, comm: &str) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.1 = comm.into();
        }
        if let Some(p) = self.processes.get_mut(&tid) {
            p.comm = comm.into();
        }
    }
    /// Moves a process to another cgroup.
    pub fn move_to(&mut self, tgid: u32, cgroup: &str) {
        if let Some(p) = self.processes.get_mut(&tgid) {
            p.cgroup = cgroup.into();
        }
    }
    /// Removes a thread (and the process with its leader).
    pub fn exit(&mut self, tid: u32) {
        self.threads.remove(&tid);
        if self.processes.remove(&tid).is_some() {
            self.threads.retain(|_, t| t.0 != tid);
        }
    }
}

impl crate::backend::TaskSource for FakeSource {
    fn process_facts(&mut self, tgid: u32) -> Result<ProcessFacts, crate::backend::Gone> {
        self.facts_reads += 1;
        let mut facts = self
            .processes
            .get(&tgid)
            .cloned()
            .ok_or(crate::backend::Gone(tgid))?;
        if self.cmdlines_skipped {
            facts.cmdline = Arc::default();
        }
        Ok(facts)
    }
    fn read_cmdlines(&mut self, wanted: bool) {
        self.cmdlines_skipped = !wanted;
    }
    fn process_cmdline(&mut self, tgid: u32) -> Result<Arc<str>, crate::backend::Gone> {
        self.cmdline_reads += 1;
        self.processes
            .get(&tgid)
            .map(|p| p.cmdline.clone())
            .ok_or(crate::backend::Gone(tgid))
    }
    fn thread_comm(&mut self, _tgid: u32, tid: u32) -> Result<String, crate::backend::Gone> {
        self.threads
            .get(&tid)
            .map(|t| t.1.clone())
            .ok_or(crate::backend::Gone(tid))
    }
    fn thread_comm_and_start(
        &mut self,
        tgid: u32,
        tid: u32,
    ) -> Result<(String, u64), crate::backend::Gone> {
        let comm = self.thread_comm(tgid, tid)?;
        Ok((comm, self.starts.get(&tid).copied().unwrap_or(0)))
    }
    fn thread_policy(&mut self, tid: u32) -> Result<i32, crate::backend::Gone> {
        self.threads
            .get(&tid)
            .map(|t| t.2)
            .ok_or(crate::backend::Gone(tid))
    }
    fn thread_owner(&mut self, tid: u32) -> Result<Option<u32>, crate::backend::Gone> {
        let tgid = self.threads.get(&tid).ok_or(crate::backend::Gone(tid))?.0;
        self.processes
            .get(&tgid)
            .map(|p| Some(p.uid))
            .ok_or(crate::backend::Gone(tid))
    }
    fn all_tasks(&mut self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self.threads.iter().map(|(&tid, t)| (t.0, tid)).collect();
        v.sort();
        v
    }
    fn threads_of(&mut self, tgid: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, t)| t.0 == tgid)
            .map(|(&tid, _)| tid)
            .collect();
        v.sort();
        v
    }
    fn cgroup_threads(&mut self, cgroup: &str) -> Vec<u32> {
        let procs: Vec<u32> = self
            .processes
            .values()
            .filter(|p| p.cgroup == cgroup)
            .map(|p| p.tgid)
            .collect();
        self.threads
            .iter()
            .filter(|(_, t)| procs.contains(&t.0))
            .map(|(&tid, _)| tid)
            .collect()
    }
    fn process_cgroup(&mut self, tgid: u32) -> Result<String, crate::backend::Gone> {
        self.processes
            .get(&tgid)
            .map(|p| p.cgroup.clone())
            .ok_or(crate::backend::Gone(tgid))
    }
    fn scope_tasks(&mut self, scope: &str) -> Vec<(u32, u32)> {
        let inside = |c: &str| c == scope || c.starts_with(&format!("{scope}/"));
        let mut v: Vec<(u32, u32)> = self
            .threads
            .iter()
            .filter(|(_, t)| self.processes.get(&t.0).is_some_and(|p| inside(&p.cgroup)))
            .map(|(&tid, t)| (t.0, tid))
            .collect();
        v.sort();
        v
    }
    fn tgid_of(&mut self, tid: u32) -> Result<u32, crate::backend::Gone> {
        self.threads
            .get(&tid)
            .map(|t| t.0)
            .ok_or(crate::backend::Gone(tid))
    }
}

/// A backend that records what it was told to apply (class names by tid, knobs by cgroup).
#[derive(Debug, Default)]
pub struct RecordingBackend {
    /// tid → class name currently applied.
    pub applied: std::collections::HashMap<u32, String>,
    /// Number of apply_task calls.
    pub apply_calls: u64,
    /// cgroup → knobs last applied.
    pub groups: std::collections::HashMap<String, GroupKnobs>,
    /// Number of restore_all calls.
    pub restores: u64,
    /// Report scx mode instead of fallback.
    pub scx: bool,
    /// Refuse every group write (as a full BPF map or a missing knob would).
    pub refuse_groups: bool,
    /// What `set_manage_realtime` last said.
    pub manage_realtime: bool,
    /// Threads a test made RT/DL after the controller first saw them: refused with
    /// `ApplyError::Realtime` unless RT/DL tasks are managed, as the fallback backend does.
    pub realtime_now: std::collections::HashSet<u32>,
    /// While set, every apply_task is refused (as a failing sched_setattr would be); shared so
    /// a test can flip it while the controller owns the backend.
    pub refuse_tasks: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// tid → the start time of the thread whose state it keeps (as the fallback backend keeps
    /// with each original); `thread_seen` with another start drops the tid's class.
    pub starts: std::collections::HashMap<u32, u64>,
    /// Every tid forget_task was called for, in order.
    pub forgotten: Vec<u32>,
    /// Every (child, parent) inherit_original was called with, in order.
    pub inherited: Vec<(u32, u32)>,
}

impl crate::backend::Backend for RecordingBackend {
    fn mode(&self) -> crate::backend::Mode {
        if self.scx {
            crate::backend::Mode::Scx
        } else {
            crate::backend::Mode::Fallback
        }
    }
    fn apply_task(
        &mut self,
        tid: u32,
        _class: ClassId,
        params: &ClassParams,
    ) -> Result<(), crate::backend::ApplyError> {
        self.apply_calls += 1;
        if self.refuse_tasks.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(crate::backend::ApplyError::Refused {
                what: format!("class {}", params.name),
                target: format!("tid {tid}"),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        if self.realtime_now.contains(&tid) && !self.manage_realtime {
            self.applied.remove(&tid);
            return Err(crate::backend::ApplyError::Realtime(tid));
        }
        self.applied.insert(tid, params.name.to_string());
        Ok(())
    }
    fn release_task(&mut self, tid: u32) {
        self.applied.remove(&tid);
    }
    fn forget_task(&mut self, tid: u32) {
        self.applied.remove(&tid);
        self.starts.remove(&tid);
        self.forgotten.push(tid);
    }
    fn inherit_original(&mut self, child: u32, parent: u32) {
        self.inherited.push((child, parent));
    }
    fn thread_seen(&mut self, tid: u32, start_ticks: u64) -> bool {
        match self.starts.insert(tid, start_ticks) {
            Some(known) if known != start_ticks => {
                self.applied.remove(&tid);
                true
            }
            _ => false,
        }
    }
    fn apply_group(
        &mut self,
        cgroup: &str,
        knobs: &GroupKnobs,
        _scx: &ScxGroupPolicy,
    ) -> Result<(), crate::backend::ApplyError> {
        if self.refuse_groups {
            return Err(crate::backend::ApplyError::Refused {
                what: "group policy".into(),
                target: cgroup.into(),
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            });
        }
        self.groups.insert(cgroup.into(), knobs.clone());
        Ok(())
    }
    fn release_group(&mut self, cgroup: &str) {
        self.groups.remove(cgroup);
    }
    fn restore_all(&mut self) -> crate::backend::RestoreReport {
        self.restores += 1;
        let n = self.applied.len() as u64;
        self.applied.clear();
        crate::backend::RestoreReport {
            tasks_restored: n,
            ..Default::default()
        }
    }
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    fn set_manage_realtime(&mut self, manage: bool) {
        self.manage_realtime = manage;
    }
}

pub mod host;

/// Malformed-request generator and driver for the control-socket fuzz tests.
pub mod fuzz {
    use std::path::Path;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;

    use crate::protocol::MAX_REQUEST_BYTES;

    /// A tiny deterministic PRNG (xorshift64*).
    pub struct Rng(pub u64);

    impl Rng {
        /// Next value.
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// A value below `n`.
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }

    /// The i-th malformed request (without newline). Every one must get an error reply.
    pub fn malformed(rng: &mut Rng, i: usize) -> Vec<u8> {
        let valid = [
            r#"{"cmd":"state","cgroup":"a/b","state":"minimized"}"#,
            r#"{"cmd":"tag","pid":1,"class":"BACKGROUND"}"#,
            r#"{"cmd":"explain","pid":1}"#,
            r#"{"cmd":"status"}"#,
        ];
        let base = valid[i % valid.len()].as_bytes();
        match rng.below(10) {
            0 => (0..rng.below(200) + 1)
                .map(|_| (rng.below(256) as u8).max(1))
                .map(|b| if b == b'\n' { b' ' } else { b })
                .collect(),
            1 => base[..rng.below(base.len() as u64 - 1) as usize].to_vec(),
            2 => br#"{"cmd":"explain","pid":"one"}"#.to_vec(),
            3 => format!(r#"{{"cmd":"x{}"}}"#, rng.next_u64()).into_bytes(),
            4 => br#"{"cmd":"status","admin":true}"#.to_vec(),
            5 => {
                let depth = 200 + rng.below(5000) as usize;
                let mut v = vec![b'['; depth];
                v.extend(std::iter::repeat_n(b']', depth));
                v
            }
            6 => br#"{"cmd":"state","cgroup":"../../etc","state":"minimized"}"#.to_vec(),
            7 => br#"{"cmd":"tag","pid":1,"tid":2,"class":"BACKGROUND"}"#.to_vec(),
            8 => br#"{"cmd":"explain","pid":99999999999}"#.to_vec(),
            _ => {
                let mut v = base.to_vec();
                let at = rng.below(v.len() as u64) as usize;
                let bytes = b"{}[]\",:\\\x00\xff";
                v[at] = bytes[rng.below(bytes.len() as u64) as usize];
                if v == base {
                    v.push(b'}');
                }
                v
            }
        }
    }

    /// Sends `n` malformed requests over 8 concurrent connections (plus a few oversized lines),
    /// asserting each gets an error reply. Returns the number sent.
    pub fn send_malformed(rt: &tokio::runtime::Runtime, socket: &Path, n: usize) -> usize {
        rt.block_on(send_malformed_async(socket, n))
    }

    /// Async version of [`send_malformed`].
    pub async fn send_malformed_async(socket: &Path, n: usize) -> usize {
        let conns = 8;
        let mut tasks = Vec::new();
        for c in 0..conns {
            let socket = socket.to_path_buf();
            let count = n / conns + usize::from(c < n % conns);
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
                let mut s = BufReader::new(UnixStream::connect(&socket).await.expect("connect"));
                for i in 0..count {
                    if i % 1000 == 999 {
                        // An oversized line: error reply, then the server closes the connection.
                        let mut big = vec![b'x'; MAX_REQUEST_BYTES + 10];
                        big.push(b'\n');
                        s.get_mut().write_all(&big).await.expect("write big");
                        let mut reply = String::new();
                        s.read_line(&mut reply).await.expect("reply to big");
                        assert!(reply.contains("\"ok\":false"), "oversized got {reply:?}");
                        s = BufReader::new(UnixStream::connect(&socket).await.expect("reconnect"));
                        continue;
                    }
                    let mut req = malformed(&mut rng, i);
                    req.push(b'\n');
                    s.get_mut().write_all(&req).await.expect("write");
                    let mut reply = String::new();
                    tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut reply))
                        .await
                        .expect("reply in time")
                        .expect("read");
                    assert!(
                        reply.contains("\"ok\":false"),
                        "request {:?} got {reply:?}",
                        String::from_utf8_lossy(&req)
                    );
                }
                count
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("fuzz connection");
        }
        total
    }
}
