// SPDX-License-Identifier: GPL-2.0-only
//! A group's CPU share terms as both backends apply them: the BPF schedulers take the weight,
//! guarantee and cap as whole percent of the machine (`group_policy`), the fallback writes
//! `cpu.weight` and `cpu.max` (quota per period). One conversion, so the two backends cannot
//! disagree about what a policy's cap means.
//!
//! Worked example, `cap_quota_us = 500` per `cap_period_us = 100000` on 8 CPUs: the machine
//! has 800 ms of CPU per 100 ms period, 0.5 ms of it is 0.0625 %; the schedulers get a 1 % cap
//! (rounded up, never to 0, which would mean "no cap"), `cpu.max` gets `500 100000` as written.
//! `cap_percent = 25` on 8 CPUs is `cpu.max` `200000 100000` (25 % of 8 CPUs = 2 CPUs).
use crate::plan::Cap;
use crate::plan::GroupSettings;

/// The `cpu.max` period a percentage cap is written with, microseconds (the kernel's default).
pub const CAP_PERIOD_US: u64 = 100_000;

/// A `cpu.max` quota: at most `quota_us` of CPU time per `period_us`, summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// CPU time per period, microseconds.
    pub quota_us: u64,
    /// Period, microseconds.
    pub period_us: u64,
}

/// A group's share terms on a machine of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareTerms {
    /// CPU weight, 1..=10000; None: the policy sets none (the cgroup's `cpu.weight` rules).
    pub weight: Option<u32>,
    /// Guaranteed share of the machine, percent (0: no guarantee).
    pub guarantee_percent: u32,
    /// Cap as a share of the machine, percent, 1..=100 (0: no cap). A quota cap is rounded up
    /// to the next whole percent: the schedulers never hold a group below what its policy
    /// allows, and a small cap never becomes 0, which would lift it.
    pub cap_percent: u32,
    /// The same cap as `cpu.max` (None: `max`, no cap). A quota cap as written; a percentage
    /// cap as that share of all CPUs per [`CAP_PERIOD_US`].
    pub cap_quota: Option<CpuQuota>,
}

impl GroupSettings {
    /// These settings' share terms on a machine with `nr_cpus` online CPUs (0 counts as 1).
    pub fn share_terms(&self, nr_cpus: u32) -> ShareTerms {
        let nr_cpus = u64::from(nr_cpus.max(1));
        let (cap_percent, cap_quota) = match self.cap {
            None => (0, None),
            Some(Cap::Percent(percent)) => (
                u32::from(percent),
                Some(CpuQuota {
                    quota_us: u64::from(percent) * nr_cpus * CAP_PERIOD_US / 100,
                    period_us: CAP_PERIOD_US,
                }),
            ),
            Some(Cap::Quota {
                quota_us,
                period_us,
            }) => {
                let machine_us = period_us.max(1) * nr_cpus;
                let percent = (u128::from(quota_us) * 100).div_ceil(u128::from(machine_us));
                (
                    percent.clamp(1, 100) as u32,
                    Some(CpuQuota {
                        quota_us,
                        period_us,
                    }),
                )
            }
        };
        ShareTerms {
            weight: self.weight.map(|weight| weight.clamp(1, 10000)),
            guarantee_percent: self.guarantee_percent.map_or(0, u32::from),
            cap_percent,
            cap_quota,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::ClassMask;

    fn settings(cap: Option<Cap>) -> GroupSettings {
        GroupSettings {
            weight: None,
            allow: None,
            deny: Vec::new(),
            ceiling: None,
            floor: None,
            allowed: ClassMask::default(),
            guarantee_percent: None,
            cap,
        }
    }

    #[test]
    fn a_quota_cap_becomes_a_percentage_rounded_up_and_never_zero() {
        // (quota µs, period µs, CPUs) → percent of the machine
        let table = [
            (500, 100_000, 8, 1), // 0.0625 %: 1, not 0 ("no cap")
            (1, 1_000_000, 64, 1),
            (50_000, 100_000, 1, 50),
            (50_000, 100_000, 2, 25),
            (100_000, 100_000, 8, 13), // 12.5 %
            (200_000, 100_000, 2, 100),
            (300_000, 100_000, 2, 100), // more than the machine: 100
            (1_000, 1_000, 4, 25),
            (50_000, 100_000, 0, 50), // 0 CPUs counts as 1
            (u64::MAX, 1, 1, 100),    // no overflow
        ];
        for (quota_us, period_us, nr_cpus, percent) in table {
            let terms = settings(Some(Cap::Quota {
                quota_us,
                period_us,
            }))
            .share_terms(nr_cpus);
            assert_eq!(
                terms.cap_percent, percent,
                "{quota_us} µs per {period_us} µs on {nr_cpus} CPUs"
            );
            assert_eq!(
                terms.cap_quota,
                Some(CpuQuota {
                    quota_us,
                    period_us
                })
            );
        }
    }

    #[test]
    fn a_percentage_cap_becomes_a_quota_of_all_cpus() {
        let terms = settings(Some(Cap::Percent(25))).share_terms(8);
        assert_eq!(terms.cap_percent, 25);
        assert_eq!(
            terms.cap_quota,
            Some(CpuQuota {
                quota_us: 200_000,
                period_us: CAP_PERIOD_US
            })
        );
    }

    #[test]
    fn no_cap_and_no_guarantee_are_zero() {
        let mut s = settings(None);
        let terms = s.share_terms(4);
        assert_eq!((terms.cap_percent, terms.cap_quota), (0, None));
        assert_eq!(terms.guarantee_percent, 0);
        s.guarantee_percent = Some(30);
        assert_eq!(terms.weight, None);
        s.weight = Some(250);
        let terms = s.share_terms(4);
        assert_eq!((terms.weight, terms.guarantee_percent), (Some(250), 30));
    }
}
