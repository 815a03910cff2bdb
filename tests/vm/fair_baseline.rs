// SPDX-License-Identifier: GPL-2.0-only
//! Scenario (c), fair-scheduler baseline: two cgroups at cpu.weight 200 and 100 with two CPU
//! hogs each, 10 s. The ratio is measured inside the guest from cpu.stat, so host load slows
//! the guest but does not skew the split.
//!
//! Linux 7.3 has two answers here. Its default group-share mode, `concur`, scales a group's
//! shares by its concurrency, computed as the group's PELT runnable average truncated to whole
//! tasks; two always-runnable hogs average just under or at 2048, so each 2-hog group counts
//! as 1 or 2 depending on rounding and the split lands on 2:1, 4:1 or 1:1 from run to run. 18
//! runs of the default mode on 2026-11-23: 11 within 1% of 2:1, five at 4:1, one at 1:1 and one
//! at 2.44:1 (a count that changed mid-window); in the 11 that sampled placement, every 100 ms
//! sample found one hog of each group on each CPU, so the balancer is not the cause. The
//! classic `smp` mode splits shares by where the load is: 1.99-2.01:1 in 6 of 6 runs,
//! alternating with `concur` in one boot (which gave 4.00, 2.00, 2.61, 2.00, 4.03, 2.00). The
//! test asserts the classic mode within 3% of 2:1 and reports the default mode, naming it, as
//! the baseline users of 7.3 actually get, when `CANOPY_VM_FAIR_REFERENCES=1`: no assertion
//! reads the default mode's split, so the suite leaves its 11 s out (`support::fair_references`).

use std::sync::OnceLock;
use std::time::Duration;

use canopy_vmtest::{CpuSplit, Outcome};

use crate::support::{fair_reference, fair_reference_result, part, parts_script, shared_run};

/// Both tests' splits in one boot (`fair-baseline`), each test's in its own part: the fair
/// scheduler needs nothing loaded, so a second boot only cost its boot (about 7 s quiet).
fn fair_part(name: &str) -> anyhow::Result<Outcome> {
    static SHARED: OnceLock<Result<Outcome, String>> = OnceLock::new();
    let outcome = shared_run(&SHARED, || {
        let parts = [
            (
                "fair-2to1",
                format!(
                    "canopy-guest cpu-split --group fair_a:200:2 --group fair_b:100:2 --seconds 10 --warmup 1 --fair-cgroup-mode smp --kind split-smp\n{}",
                    fair_reference(
                        "canopy-guest cpu-split --group fair_a:200:2 --group fair_b:100:2 --seconds 10 --warmup 1 --kind split-default\n"
                    )
                ),
            ),
            (
                "fair-4to1-conserve",
                "canopy-guest cpu-split --group fair_a:400:4 --group fair_b:100:4 --seconds 10 --kind split-400-100\n\
                 canopy-guest cpu-split --group fair_a:200:2 --group fair_b:100:2:4 --seconds 8 --sample-ms 250 --kind conserve\n"
                    .to_string(),
            ),
        ];
        crate::scenario("fair-baseline")
            .script(parts_script(&parts))
            .timeout(Duration::from_secs(400))
            .run()
            .map_err(anyhow::Error::from)
    })?;
    println!("{}", outcome.summary());
    part(outcome, name)
}

#[test]
fn fair_scheduler_splits_cpu_by_weight() -> anyhow::Result<()> {
    let outcome = fair_part("fair-2to1")?;
    let report = |split: &serde_json::Value| -> (f64, serde_json::Value) {
        let ratio = split["ratio"].as_f64().unwrap_or(f64::NAN);
        println!(
            "fair scheduler, group-share mode {}, weights 200:100, 2+2 hogs, {:.1} s window: ratio {ratio:.3}:1, utilization {:.3}; hog placements (share of 100 ms samples): {}",
            split["fair_cgroup_mode"],
            split["window_s"].as_f64().unwrap_or_default(),
            split["utilization"].as_f64().unwrap_or_default(),
            split["placements"]
        );
        (ratio, split.clone())
    };
    let (classic, classic_split) = report(outcome.result("split-smp")?);
    if let Some(split) = fair_reference_result(&outcome, "split-default")? {
        let (default, default_split) = report(split);
        println!(
            "the 7.3 default mode {} gave {default:.3}:1 (2:1, 4:1 or 1:1 depending on how each group's runnable average rounds)",
            default_split["fair_cgroup_mode"]
        );
    }
    assert_eq!(
        classic_split["fair_cgroup_mode"], "smp",
        "the classic mode was not in force: {classic_split}"
    );
    assert!(
        (classic / 2.0 - 1.0).abs() <= 0.03,
        "CPU split {classic:.3}:1 is not within 3% of 2:1: {classic_split}"
    );
    Ok(())
}

/// The fair scheduler's figures for issue 4's other CPU targets, same VM: 400:100 with four
/// hogs each must split within 3% of 4:1 (TESTBED: 4.01:1). Work conservation: group A (200,
/// two hogs) alone for 4 s must get at least 90% of both CPUs. B (100, two hogs) then wakes;
/// how long the 250 ms interval ratio takes to come back within 10% of 2:1 is only reported:
/// the fair scheduler does not reliably settle within 1 s here (its fork placement can put
/// both new hogs on one CPU; runs measured 1:1 or 4:1 for 2-4 s before 2:1), which is the
/// baseline canopy's root scheduler is meant to beat (issue 4, acceptance b).
#[test]
fn fair_scheduler_400_100_and_work_conservation() -> anyhow::Result<()> {
    let outcome = fair_part("fair-4to1-conserve")?;
    let four = CpuSplit::from_value(outcome.result("split-400-100")?)?;
    println!(
        "fair scheduler, weights 400:100, 4+4 hogs: ratio {:.3}:1",
        four.ratio
    );
    let conserve = CpuSplit::from_value(outcome.result("conserve")?)?;
    let alone = conserve.utilization_between(0, 0.0, 4.0);
    let settle = conserve.settle_time(4.0, 2.0, 0.10);
    let after = conserve.ratio_between(5.0, 8.0); // reported only, see above
    println!(
        "fair scheduler, A alone: {:.1}% of both CPUs; B wakes at 4 s: back within 10% of 2:1 after {settle:?} s, ratio {after:.3}:1 over 5-8 s",
        alone * 100.0
    );
    assert!(
        (four.ratio / 4.0 - 1.0).abs() <= 0.03,
        "400:100 split {:.3}:1 is not within 3% of 4:1",
        four.ratio
    );
    assert!(
        alone >= 0.90,
        "A alone got only {:.1}% of the CPUs",
        alone * 100.0
    );
    Ok(())
}
