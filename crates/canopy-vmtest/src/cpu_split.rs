// SPDX-License-Identifier: GPL-2.0-only
//! A typed view of `canopy-guest cpu-split` results, with the arithmetic scenarios share: the
//! ratio between two groups over a slice of the time series, a group's CPU use in a slice, and
//! how long after a load change the split takes to come back on target.

use serde_json::Value;

use crate::error::{Error, Result};

/// One `cpu-split` result.
#[derive(Debug, Clone)]
pub struct CpuSplit {
    /// The whole-window ratio of the first group's CPU time to the second's.
    pub ratio: f64,
    /// The first group's weight over the second's.
    pub expected_ratio: f64,
    /// Busy fraction of all CPUs over the window.
    pub utilization: f64,
    pub cpus: usize,
    pub window_s: f64,
    /// Per-group CPU seconds over the window, in `--group` order.
    pub cpu_seconds: Vec<f64>,
    /// With `--sample-ms`: (end of interval in s, per-group CPU µs in that interval).
    pub series: Vec<(f64, Vec<u64>)>,
}

impl CpuSplit {
    pub fn from_value(value: &Value) -> Result<CpuSplit> {
        let bad = |what: &str| Error::BadResult {
            what: what.into(),
            result: value.to_string(),
        };
        let number = |key: &str| value[key].as_f64().ok_or_else(|| bad(key));
        let cpu_seconds = value["groups"]
            .as_array()
            .ok_or_else(|| bad("groups"))?
            .iter()
            .map(|group| {
                group["cpu_seconds"]
                    .as_f64()
                    .ok_or_else(|| bad("groups[].cpu_seconds"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut series = Vec::new();
        for sample in value["series"].as_array().into_iter().flatten() {
            let at = sample["t_s"].as_f64().ok_or_else(|| bad("series[].t_s"))?;
            let usage = sample["usage_usec"]
                .as_array()
                .ok_or_else(|| bad("series[].usage_usec"))?
                .iter()
                .map(|usec| usec.as_u64().unwrap_or(0))
                .collect();
            series.push((at, usage));
        }
        Ok(CpuSplit {
            ratio: number("ratio")?,
            expected_ratio: number("expected_ratio")?,
            utilization: number("utilization")?,
            cpus: value["cpus"].as_u64().ok_or_else(|| bad("cpus"))? as usize,
            window_s: number("window_s")?,
            cpu_seconds,
            series,
        })
    }

    /// Per-group CPU µs summed over the intervals that end in `(from_s, to_s]`, and the span
    /// of time those intervals cover.
    pub fn usage_between(&self, from_s: f64, to_s: f64) -> (Vec<u64>, f64) {
        let mut total: Vec<u64> = Vec::new();
        let mut previous_end = 0.0;
        let mut span = 0.0;
        for (end, usage) in &self.series {
            if *end > from_s && *end <= to_s {
                if total.is_empty() {
                    total = vec![0; usage.len()];
                }
                for (sum, usec) in total.iter_mut().zip(usage) {
                    *sum += usec;
                }
                span += end - previous_end;
            }
            previous_end = *end;
        }
        (total, span)
    }

    /// First group's CPU over the second's in `(from_s, to_s]` (NaN without samples).
    pub fn ratio_between(&self, from_s: f64, to_s: f64) -> f64 {
        match self.usage_between(from_s, to_s).0.as_slice() {
            [first, second, ..] if *second > 0 => *first as f64 / *second as f64,
            _ => f64::NAN,
        }
    }

    /// Fraction of all CPUs group `index` used in `(from_s, to_s]`.
    pub fn utilization_between(&self, index: usize, from_s: f64, to_s: f64) -> f64 {
        let (usage, span) = self.usage_between(from_s, to_s);
        match usage.get(index) {
            Some(usec) if span > 0.0 => *usec as f64 / 1e6 / (span * self.cpus as f64),
            _ => f64::NAN,
        }
    }

    /// Seconds after `change_s` until the per-interval ratio is within `tolerance` (relative)
    /// of `target` and stays there for the rest of the series; None if it never settles.
    pub fn settle_time(&self, change_s: f64, target: f64, tolerance: f64) -> Option<f64> {
        let after: Vec<&(f64, Vec<u64>)> = self
            .series
            .iter()
            .filter(|(end, _)| *end > change_s)
            .collect();
        let on_target = |usage: &Vec<u64>| match usage.as_slice() {
            [first, second, ..] if *second > 0 => {
                (*first as f64 / *second as f64 / target - 1.0).abs() <= tolerance
            }
            _ => false,
        };
        let first_settled =
            (0..after.len()).find(|&i| after[i..].iter().all(|(_, usage)| on_target(usage)))?;
        // The interval that settled began one sample earlier than it ended.
        let began = if first_settled == 0 {
            change_s
        } else {
            after[first_settled - 1].0
        };
        Some((began - change_s).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CpuSplit {
        CpuSplit::from_value(&json!({
            "ratio": 3.0, "expected_ratio": 2.0, "utilization": 1.0, "cpus": 2, "window_s": 2.0,
            "groups": [{"cpu_seconds": 3.0}, {"cpu_seconds": 1.0}],
            "series": [
                {"t_s": 0.5, "usage_usec": [1_000_000, 0]},
                {"t_s": 1.0, "usage_usec": [1_000_000, 0]},
                {"t_s": 1.5, "usage_usec": [500_000, 500_000]},
                {"t_s": 2.0, "usage_usec": [666_000, 334_000]},
            ]
        }))
        .unwrap()
    }

    #[test]
    fn slices_of_the_series() {
        let split = sample();
        assert!((split.utilization_between(0, 0.0, 1.0) - 1.0).abs() < 1e-9);
        assert!((split.ratio_between(1.5, 2.0) - 666.0 / 334.0).abs() < 1e-9);
        assert!(split.ratio_between(5.0, 6.0).is_nan());
    }

    #[test]
    fn settle_time_is_measured_from_the_change() {
        let split = sample();
        assert_eq!(split.settle_time(1.0, 2.0, 0.05), Some(0.5));
        assert_eq!(split.settle_time(1.0, 10.0, 0.05), None);
    }
}
