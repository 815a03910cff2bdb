//! The values in cgroupfs files, typed: `cpu.weight`, `cpu.max`, `cpu.uclamp.min/max`,
//! `cpu.stat` and GNOME's focus xattr, each parsed and formatted here (no I/O; [`super::Cgroup`]
//! reads and writes the files).

use std::fmt;
use std::str::FromStr;

use super::CgroupError;

/// `cpu.weight`: 1..=10000, default 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuWeight(u32);

impl CpuWeight {
    /// The kernel's default weight.
    pub const DEFAULT: CpuWeight = CpuWeight(100);

    /// A weight, if in 1..=10000.
    pub fn new(weight: u32) -> Result<CpuWeight, CgroupError> {
        if (1..=10_000).contains(&weight) {
            Ok(CpuWeight(weight))
        } else {
            Err(CgroupError::InvalidValue {
                knob: "cpu.weight",
                value: weight.to_string(),
                reason: "must be 1..=10000",
            })
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for CpuWeight {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl FromStr for CpuWeight {
    type Err = &'static str;
    fn from_str(text: &str) -> Result<CpuWeight, &'static str> {
        // cpu.weight reads 0 while cpu.idle is 1; keep the number as the kernel gives it.
        text.trim()
            .parse()
            .map(CpuWeight)
            .map_err(|_| "not a number")
    }
}

/// `cpu.max`: at most `quota_us` of CPU time per `period_us` (`None` = no limit, "max").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuMax {
    /// The quota in µs per period; `None` means unlimited.
    pub quota_us: Option<u64>,
    /// The period in µs (default 100000).
    pub period_us: u64,
}

impl CpuMax {
    /// No limit, default period.
    pub const UNLIMITED: CpuMax = CpuMax {
        quota_us: None,
        period_us: 100_000,
    };

    /// A limit, checked against the kernel's ranges (quota ≥ 1000 µs, period 1000..=1000000 µs).
    pub fn new(quota_us: Option<u64>, period_us: u64) -> Result<CpuMax, CgroupError> {
        let limit = CpuMax {
            quota_us,
            period_us,
        };
        if !(1_000..=1_000_000).contains(&period_us) {
            return Err(CgroupError::InvalidValue {
                knob: "cpu.max",
                value: limit.to_string(),
                reason: "period must be 1000..=1000000 µs",
            });
        }
        if quota_us.is_some_and(|quota| quota < 1_000) {
            return Err(CgroupError::InvalidValue {
                knob: "cpu.max",
                value: limit.to_string(),
                reason: "quota must be at least 1000 µs",
            });
        }
        Ok(limit)
    }
}

impl fmt::Display for CpuMax {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota_us {
            Some(quota) => write!(formatter, "{quota} {}", self.period_us),
            None => write!(formatter, "max {}", self.period_us),
        }
    }
}

impl FromStr for CpuMax {
    type Err = &'static str;
    fn from_str(text: &str) -> Result<CpuMax, &'static str> {
        let mut parts = text.split_ascii_whitespace();
        let quota = parts.next().ok_or("empty")?;
        let period_us = match parts.next() {
            Some(period) => period.parse().map_err(|_| "bad period")?,
            None => 100_000,
        };
        if parts.next().is_some() {
            return Err("more than two fields");
        }
        let quota_us = if quota == "max" {
            None
        } else {
            Some(quota.parse().map_err(|_| "bad quota")?)
        };
        Ok(CpuMax {
            quota_us,
            period_us,
        })
    }
}

/// `cpu.uclamp.min`/`max`: a percentage with two decimals, stored in hundredths of a percent
/// (0..=10000; 10000 reads and writes as `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UclampPercent(u32);

impl UclampPercent {
    /// 100%, written `max`.
    pub const MAX: UclampPercent = UclampPercent(10_000);
    /// 0%.
    pub const ZERO: UclampPercent = UclampPercent(0);

    /// A value in hundredths of a percent (e.g. 2550 = 25.50%), if ≤ 10000.
    pub fn from_hundredths(hundredths: u32) -> Result<UclampPercent, CgroupError> {
        if hundredths <= 10_000 {
            Ok(UclampPercent(hundredths))
        } else {
            Err(CgroupError::InvalidValue {
                knob: "cpu.uclamp",
                value: format!("{}.{:02}", hundredths / 100, hundredths % 100),
                reason: "must be 0..=100 percent",
            })
        }
    }

    /// Hundredths of a percent.
    pub fn hundredths(self) -> u32 {
        self.0
    }
}

impl fmt::Display for UclampPercent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 10_000 {
            formatter.write_str("max")
        } else {
            write!(formatter, "{}.{:02}", self.0 / 100, self.0 % 100)
        }
    }
}

impl FromStr for UclampPercent {
    type Err = &'static str;
    fn from_str(text: &str) -> Result<UclampPercent, &'static str> {
        let text = text.trim();
        if text == "max" {
            return Ok(UclampPercent::MAX);
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || !whole.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err("not a percentage");
        }
        if fraction.len() > 2 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err("at most two decimals");
        }
        let whole: u32 = whole.parse().map_err(|_| "not a percentage")?;
        let fraction: u32 = format!("{fraction:0<2}")
            .parse()
            .map_err(|_| "not a percentage")?;
        let hundredths = whole
            .checked_mul(100)
            .and_then(|value| value.checked_add(fraction));
        match hundredths {
            Some(value) if value <= 10_000 => Ok(UclampPercent(value)),
            _ => Err("above 100 percent"),
        }
    }
}

/// `cpu.stat`. The first three lines exist on every cgroup2 cgroup; the bandwidth lines only
/// with the cpu controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStat {
    /// Total CPU time in µs.
    pub usage_usec: u64,
    /// User CPU time in µs.
    pub user_usec: u64,
    /// System CPU time in µs.
    pub system_usec: u64,
    /// Elapsed bandwidth periods.
    pub nr_periods: Option<u64>,
    /// Periods in which the group was throttled.
    pub nr_throttled: Option<u64>,
    /// Total time throttled in µs.
    pub throttled_usec: Option<u64>,
    /// Periods in which burst was used.
    pub nr_bursts: Option<u64>,
    /// Total burst time in µs.
    pub burst_usec: Option<u64>,
}

impl FromStr for CpuStat {
    type Err = &'static str;
    fn from_str(text: &str) -> Result<CpuStat, &'static str> {
        let mut stat = CpuStat::default();
        let mut seen_usage = false;
        for line in text.lines() {
            let mut parts = line.split_ascii_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                if line.trim().is_empty() {
                    continue;
                }
                return Err("a line without a value");
            };
            let value: u64 = value.parse().map_err(|_| "a value that is not a number")?;
            match key {
                "usage_usec" => {
                    stat.usage_usec = value;
                    seen_usage = true;
                }
                "user_usec" => stat.user_usec = value,
                "system_usec" => stat.system_usec = value,
                "nr_periods" => stat.nr_periods = Some(value),
                "nr_throttled" => stat.nr_throttled = Some(value),
                "throttled_usec" => stat.throttled_usec = Some(value),
                "nr_bursts" => stat.nr_bursts = Some(value),
                "burst_usec" => stat.burst_usec = Some(value),
                _ => {}
            }
        }
        if !seen_usage {
            return Err("no usage_usec line");
        }
        Ok(stat)
    }
}

/// GNOME's focus signal for an app cgroup (`user.xdg.inactive-since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Focus {
    /// `-1`: the app has focus.
    Focused,
    /// The app lost focus at this `CLOCK_MONOTONIC` time, in µs.
    InactiveSince {
        /// Monotonic time in µs (`g_get_monotonic_time()`).
        monotonic_us: u64,
    },
    /// No xattr: nothing reports focus for this cgroup.
    NotSet,
}

impl Focus {
    /// How long the app has been without focus at monotonic time `now_us` (see
    /// [`crate::monotonic_now_ns`]); `None` if it has focus or nothing reports it.
    pub fn inactive_for(&self, now_us: u64) -> Option<std::time::Duration> {
        match *self {
            Focus::InactiveSince { monotonic_us } => Some(std::time::Duration::from_micros(
                now_us.saturating_sub(monotonic_us),
            )),
            Focus::Focused | Focus::NotSet => None,
        }
    }

    /// Parses an xattr value (`-1` or a decimal µs count; a trailing NUL or newline is fine).
    pub fn parse(value: &[u8]) -> Result<Focus, &'static str> {
        let text = std::str::from_utf8(value).map_err(|_| "not UTF-8")?;
        let text = text.trim_end_matches(['\0', '\n']).trim();
        if text == "-1" {
            return Ok(Focus::Focused);
        }
        text.parse()
            .map(|monotonic_us| Focus::InactiveSince { monotonic_us })
            .map_err(|_| "neither -1 nor a timestamp in µs")
    }
}

pub(super) fn parse_bool_knob(text: &str) -> Result<bool, &'static str> {
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err("neither 0 nor 1"),
    }
}
