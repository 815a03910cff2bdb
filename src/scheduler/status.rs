// SPDX-License-Identifier: GPL-2.0-only
//! The hierarchy as the kernel and the root scheduler see it: sysfs (`state`, each scheduler's
//! `ops` and `caps` under `root/sub/sub-<cgroup id>`) joined with the root's pinned `members`,
//! `stats` and `child_restarts` maps. Two samples an interval apart give each member's CPU rate and its share
//! against the target its share in the cpu tree and cap imply (`target_shares`). Works from any process while a root is loaded;
//! `canopy status` and `canopy scheduler status` both show it.
use std::time::Duration;
use std::time::Instant;

use canopy_sys::cgroup::CgroupHierarchy;
use canopy_sys::sched_ext;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;
use serde::Serialize;

use super::bpf_bytes::c_string;
use super::bpf_bytes::from_bytes;
use super::bpf_intf;
use super::bpf_intf::Stats;

/// USER_INTERACTIVE (preempting-class) wakeups over every path the root places them by, and
/// how many of them ran more than 1 ms after waking: one list of the paths for `canopy top`.
pub fn preempting_wakeups(stats: &Stats) -> (u64, u64) {
    let paths = [
        (stats.wake_idle, stats.wake_idle_slow),
        (stats.wake_preempt_local, stats.wake_preempt_local_slow),
        (stats.wake_preempt_remote, stats.wake_preempt_remote_slow),
        (
            stats.wake_after_higher_class,
            stats.wake_after_higher_class_slow,
        ),
        (stats.wake_queued, stats.wake_queued_slow),
    ];
    paths.iter().fold((0, 0), |(all, slow), (path, path_slow)| {
        (all + path, slow + path_slow)
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// /sys/kernel/sched_ext/state
    pub state: String,
    /// ops name of the root scheduler, if any
    pub root_ops: Option<String>,
    /// every scheduler in the hierarchy, root first (from sysfs)
    pub schedulers: Vec<SchedulerNode>,
    /// what the root divides CPU among (from its maps; empty unless canopy_root is loaded)
    pub members: Vec<MemberStatus>,
    /// root scheduler counters
    pub stats: Stats,
    /// canopy children the supervisor loaded again after a restart request (root's
    /// `child_restarts` map), per cgroup
    pub child_restarts: Vec<ChildRestartStatus>,
    /// sampling interval used for the rates, in seconds
    pub interval_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerNode {
    pub ops: String,
    /// 0 for the root
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub level: u32,
    /// `caps` file, one `name: cid-list` line per capability
    pub caps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub slot: u32,
    pub name: String,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub weight: u32,
    /// its hierarchical share of the machine in the root's cpu tree (0..1): what its vtime is
    /// charged at, and its target before caps
    pub tree_share: f64,
    pub guarantee_pct: u32,
    pub cap_pct: u32,
    pub cpu_ns_total: u64,
    /// CPU time it received during the interval
    pub cpu_ns_interval: u64,
    pub dispatches: u64,
    pub throttled: u64,
    /// weighted ns of credit dropped when it came back from idle (see bpf/cid_grants.bpf.h)
    pub lifted_vtime: u64,
    /// CPUs' worth of time it received during the interval
    pub cpus_used: f64,
    /// its part of all CPU time handed out during the interval
    pub share: f64,
    /// the part its weight entitles it to among the members that ran, at most its cap
    pub target_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChildRestartStatus {
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// times a child was loaded and attached again
    pub restarts: u32,
    /// restarts since a child last ran long enough to count as stable
    pub in_a_row: u32,
    /// the supervisor stopped re-attaching it (it kept asking)
    pub gave_up: bool,
    pub last_exit_code: i64,
}

fn read_child_restarts(map: &MapHandle) -> Vec<ChildRestartStatus> {
    let mut records: Vec<ChildRestartStatus> = map
        .keys()
        .filter_map(|key| {
            let bytes = map.lookup(&key, MapFlags::ANY).ok()??;
            let record: bpf_intf::canopy_child_restarts = from_bytes(&bytes);
            let cgroup_id: u64 = from_bytes(&key);
            Some(ChildRestartStatus {
                cgroup_id,
                cgroup: cgroup_of_id(cgroup_id),
                restarts: record.restarts,
                in_a_row: record.in_a_row,
                gave_up: record.gave_up != 0,
                last_exit_code: record.last_exit_code,
            })
        })
        .collect();
    records.sort_by_key(|record| record.cgroup_id);
    records
}

fn read_members(map: &MapHandle) -> Vec<(u32, bpf_intf::canopy_member)> {
    (0..bpf_intf::CANOPY_MAX_MEMBERS)
        .filter_map(|slot| {
            let bytes = map.lookup(&slot.to_ne_bytes(), MapFlags::ANY).ok()??;
            let member: bpf_intf::canopy_member = from_bytes(&bytes);
            (member.active != 0).then_some((slot, member))
        })
        .collect()
}

fn read_stats(map: &MapHandle) -> Stats {
    let values: Vec<u64> = (0..bpf_intf::CANOPY_NR_STATS)
        .map(|index| {
            map.lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .map(|per_cpu| per_cpu.iter().map(|b| from_bytes::<u64>(b)).sum())
                .unwrap_or(0)
        })
        .collect();
    Stats::from_indexed(&values)
}

/// The directory of the cgroup with id `id` (the cgroup2 mount point for the root, id 1).
fn cgroup_of_id(id: u64) -> Option<String> {
    CgroupHierarchy::system()
        .find_id(id)
        .map(|path| path.display().to_string())
}

/// Every scheduler in the hierarchy from sysfs (canopy-sys), with its cgroup's path.
pub fn scheduler_tree() -> Vec<SchedulerNode> {
    canopy_sys::sched_ext::hierarchy()
        .into_iter()
        .map(|node| SchedulerNode {
            cgroup: (node.cgroup_id > 1)
                .then(|| cgroup_of_id(node.cgroup_id))
                .flatten(),
            ops: node.ops,
            cgroup_id: node.cgroup_id,
            level: node.level,
            caps: node.caps,
        })
        .collect()
}

/// The first of the two samples `canopy status` takes: the root's members now. Taking it,
/// doing other work (asking the daemon) and then [`finish`](Sampler::finish)ing lets the
/// interval overlap that work.
pub struct Sampler {
    members_map: Option<MapHandle>,
    stats_map: Option<MapHandle>,
    child_restarts_map: Option<MapHandle>,
    before: Vec<(u32, bpf_intf::canopy_member)>,
    started: Instant,
}

impl Sampler {
    /// Takes the first sample (nothing to sample unless canopy_root's maps are pinned).
    pub fn start() -> Sampler {
        let pinned = |name: &str| MapHandle::from_pinned_path(sched_ext::pinned_map(name));
        let (members_map, stats_map) = match (pinned("members"), pinned("stats")) {
            (Ok(m), Ok(s)) => (Some(m), Some(s)),
            _ => (None, None),
        };
        Sampler {
            before: members_map.as_ref().map(read_members).unwrap_or_default(),
            members_map,
            stats_map,
            child_restarts_map: pinned("child_restarts").ok(),
            started: Instant::now(),
        }
    }

    /// Takes the second sample at least `interval` after the first and computes the rates.
    pub fn finish(self, interval: Duration) -> Status {
        if self.members_map.is_some() {
            std::thread::sleep(interval.saturating_sub(self.started.elapsed()));
        }
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let after = self
            .members_map
            .as_ref()
            .map(read_members)
            .unwrap_or_default();
        let before = &self.before;
        let delta_of = |slot: u32, now: u64| -> u64 {
            before
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, m)| now.saturating_sub(m.cpu_ns))
                .unwrap_or(0)
        };
        let total_delta: u64 = after
            .iter()
            .map(|(slot, m)| delta_of(*slot, m.cpu_ns))
            .sum();
        let targets = target_shares(
            &after
                .iter()
                .map(|(slot, m)| {
                    let ran = delta_of(*slot, m.cpu_ns) > 0;
                    // its share of the machine in the cpu tree, which its vtime is charged at
                    // (bpf/cid_grants.bpf.h)
                    (if ran { m.tree_share } else { 0 }, m.cap_pct)
                })
                .collect::<Vec<_>>(),
        );

        let members = after
            .iter()
            .zip(targets)
            .map(|((slot, m), target_share)| {
                let delta = delta_of(*slot, m.cpu_ns);
                MemberStatus {
                    slot: *slot,
                    name: if *slot == bpf_intf::CANOPY_SELF_SLOT {
                        "(root tasks)".into()
                    } else {
                        c_string(&m.name)
                    },
                    cgroup_id: m.cgroup_id,
                    cgroup: cgroup_of_id(m.cgroup_id),
                    weight: m.weight,
                    tree_share: m.tree_share as f64 / bpf_intf::CANOPY_TREE_SHARE_ONE as f64,
                    guarantee_pct: m.guarantee_pct,
                    cap_pct: m.cap_pct,
                    cpu_ns_total: m.cpu_ns,
                    cpu_ns_interval: delta,
                    dispatches: m.dispatches,
                    throttled: m.throttled,
                    lifted_vtime: m.lifted_vtime,
                    cpus_used: delta as f64 / 1e9 / elapsed,
                    share: if total_delta > 0 {
                        delta as f64 / total_delta as f64
                    } else {
                        0.0
                    },
                    target_share,
                }
            })
            .collect();

        Status {
            state: sched_ext::state().unwrap_or_else(|| "absent".into()),
            root_ops: sched_ext::root_ops(),
            schedulers: scheduler_tree(),
            members,
            stats: self.stats_map.as_ref().map(read_stats).unwrap_or_default(),
            child_restarts: self
                .child_restarts_map
                .as_ref()
                .map(read_child_restarts)
                .unwrap_or_default(),
            interval_s: elapsed,
        }
    }
}

/// Each member's target share of the CPU time handed out, from (weight, cap_pct) pairs (weight 0:
/// it did not run, target 0): weights divide the whole, and a member whose weight share is above
/// its cap (a percentage of all CPUs) is held at the cap, the rest going to the others by
/// weight, as the root's dispatch does. Example: weights 200 and 100 with a 25% cap on the
/// first: 25% and 75% (not 66.7% and 33.3%).
fn target_shares(members: &[(u32, u32)]) -> Vec<f64> {
    let mut targets = vec![0.0; members.len()];
    let mut capped = vec![false; members.len()];
    // Each pass fixes at least one more member at its cap, or settles.
    for _ in 0..=members.len() {
        let fixed: f64 = (0..members.len())
            .filter(|&i| capped[i])
            .map(|i| targets[i])
            .sum();
        let free_weight: u64 = (0..members.len())
            .filter(|&i| !capped[i])
            .map(|i| members[i].0 as u64)
            .sum();
        let left = (1.0 - fixed).max(0.0);
        let mut changed = false;
        for (i, &(weight, cap_pct)) in members.iter().enumerate() {
            if capped[i] {
                continue;
            }
            targets[i] = if free_weight > 0 {
                left * weight as f64 / free_weight as f64
            } else {
                0.0
            };
            let cap = cap_pct as f64 / 100.0;
            if weight > 0 && cap_pct > 0 && cap_pct < 100 && targets[i] > cap {
                targets[i] = cap;
                capped[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    targets
}

/// Samples the hierarchy twice, `interval` apart.
pub fn collect(interval: Duration) -> Status {
    Sampler::start().finish(interval)
}

impl Status {
    /// Whether any sched_ext scheduler is loaded (the hierarchy has a root).
    pub fn is_loaded(&self) -> bool {
        self.root_ops.is_some()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!("sched_ext: {}", self.state);
        if let Some(ops) = &self.root_ops {
            out.push_str(&format!(" (root: {ops})"));
        }
        out.push('\n');
        for node in &self.schedulers {
            let indent = "  ".repeat(node.level as usize + 1);
            let place = node.cgroup.clone().unwrap_or_else(|| {
                if node.level == 0 {
                    "/".into()
                } else {
                    format!("cgroup id {}", node.cgroup_id)
                }
            });
            out.push_str(&format!("{indent}{} on {place}", node.ops));
            if !node.caps.is_empty() && node.level > 0 {
                out.push_str(&format!("  [{}]", node.caps.join(", ")));
            }
            out.push('\n');
        }
        if !self.members.is_empty() {
            out.push_str(&format!(
                "\n{:<4} {:<16} {:<28} {:>6} {:>5} {:>4} {:>9} {:>9} {:>7} {:>7}\n",
                "slot",
                "member",
                "cgroup",
                "weight",
                "guar%",
                "cap%",
                "cpu_ms",
                "cpus",
                "share",
                "target"
            ));
            for m in &self.members {
                out.push_str(&format!(
                    "{:<4} {:<16} {:<28} {:>6} {:>5} {:>4} {:>9.1} {:>9.3} {:>6.1}% {:>6.1}%\n",
                    m.slot,
                    m.name,
                    m.cgroup.clone().unwrap_or_else(|| m.cgroup_id.to_string()),
                    m.weight,
                    m.guarantee_pct,
                    m.cap_pct,
                    m.cpu_ns_interval as f64 / 1e6,
                    m.cpus_used,
                    m.share * 100.0,
                    m.target_share * 100.0
                ));
            }
            out.push_str(&format!("(rates over {:.2} s)\n\n", self.interval_s));
            for record in &self.child_restarts {
                out.push_str(&format!(
                    "child on {}: loaded again {} time(s) after restart requests ({} in a row){}\n",
                    record
                        .cgroup
                        .clone()
                        .unwrap_or_else(|| format!("cgroup id {}", record.cgroup_id)),
                    record.restarts,
                    record.in_a_row,
                    if record.gave_up { "; gave up" } else { "" }
                ));
            }
            if !self.child_restarts.is_empty() {
                out.push('\n');
            }
            for (name, value) in self.stats.values() {
                out.push_str(&format!("{name:<22} {value}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::target_shares;

    fn rounded(targets: Vec<f64>) -> Vec<f64> {
        targets
            .into_iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect()
    }

    #[test]
    fn weights_divide_the_whole_among_members_that_ran() {
        assert_eq!(
            rounded(target_shares(&[(100, 0), (200, 0), (0, 0)])),
            vec![0.333, 0.667, 0.0]
        );
    }

    #[test]
    fn a_capped_member_is_held_at_its_cap_and_the_rest_goes_by_weight() {
        // issue 10 Deliver 6: a child capped at 25% beside a heavier one showed 50%
        assert_eq!(
            rounded(target_shares(&[(100, 0), (200, 25), (100, 0)])),
            vec![0.375, 0.25, 0.375]
        );
        // a cap above the weight share changes nothing
        assert_eq!(
            rounded(target_shares(&[(100, 60), (100, 0)])),
            vec![0.5, 0.5]
        );
    }

    #[test]
    fn caps_that_bind_only_after_another_cap_are_found() {
        // 300:100:100 with caps 40% and 25%: the first is held at 40%, which raises the
        // second's weight share to 30%, above its 25% cap; the third gets the rest
        assert_eq!(
            rounded(target_shares(&[(300, 40), (100, 25), (100, 0)])),
            vec![0.4, 0.25, 0.35]
        );
    }
}
