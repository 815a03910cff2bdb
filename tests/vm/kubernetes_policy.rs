// SPDX-License-Identifier: GPL-2.0-only
//! Scenario: `policies/kubernetes.toml` leaves kubelet's division of the CPU alone (issue 13).
//! A kubepods tree as kubelet (systemd cgroup driver) makes it, with kubelet's `cpu.weight`
//! values (weight = 1 + (shares - 2) * 9999 / 262142, shares = request in millicores * 1024 /
//! 1000) and a guaranteed pod's `cpu.max`:
//!
//! ```text
//! kubepods.slice
//!   kubepods-burstable.slice                    30  (requests 500m + 250m: shares 768)
//!     kubepods-burstable-poda.slice             20  (500m: shares 512)   2 hogs
//!     kubepods-burstable-podb.slice             10  (250m: shares 256)   2 hogs
//!   kubepods-besteffort.slice                    1
//!     kubepods-besteffort-podc.slice             1                       2 hogs
//!   kubepods-podg.slice (guaranteed)            20  cpu.max 0.5 CPU      2 hogs
//! ```
//!
//! Worked example (classic `smp` shares, 2 CPUs): the guaranteed pod is held to 0.5 CPU by
//! its limit; burstable and best effort split the other 1.5 CPUs 30:1; inside burstable, pod a
//! gets twice pod b's time. Measured first under the fair scheduler, then under the daemon in
//! scx mode with the shipped policy (its groups own the three QoS levels, set ceilings and no
//! weight or cap: the root's cpu.weight tree runs kubelet's numbers), in the same boot. Gated
//! against the fair scheduler of that boot (the constants below, set from the runs they list):
//! pod a : pod b no further from 2:1 than under the fair scheduler plus a margin, the
//! best-effort pod's share at most a few points above the fair scheduler's, and the guaranteed
//! pod at most 0.52 CPU (its cpu.max).
//!
//! The same boot also proves that tasks already running when the root scheduler loads keep
//! their cgroup weights, window after window (issue 12's systemd split in the busybox guest):
//! before the daemon starts, `system.slice/hog-a.service` (cpu.weight 200) and
//! `hog-b.service` (100) each get a 2-thread hog, as `systemd-run -p CPUWeight=` makes them;
//! once scx is on, each of four consecutive 6 s windows must split them inside
//! SERVICES_WINDOW_RATIO (the four windows' combined ratio is printed, and the fair scheduler's
//! `smp` split of the same hogs before the daemon starts when `CANOPY_VM_FAIR_REFERENCES=1`: no
//! gate reads it, so the suite leaves its 7 s out, `support::fair_references`). Then the service
//! hogs stop and the pods are measured. VM cost: 77-93 s of VM time in seven runs at host load
//! 10-14, about 35 s of it this phase (with the services' fair split).

use std::time::Duration;

use crate::support::{fair_reference, fair_reference_result, start_daemon};

/// How much further from kubelet's 2:1 (relative error) pod a : pod b may be under canopy than
/// under the fair scheduler in the same boot. Runs on 2026-12-03 (host load 10-20), relative
/// error from 2:1, fair | canopy: one boot 0.27 | 0.26 (with an experimental slice change, not
/// kept); one boot with 3 fair and 5 canopy splits 0.12, 0.13, 0.18 | 0.03, 0.11, 0.17, 0.03,
/// 0.003; the committed test, one boot 0.005 | 0.045. Within a boot, canopy's worst minus fair's best: 0.04 (both move with the boot: the
/// first boot's figures were low for both).
const RATIO_ERROR_MARGIN: f64 = 0.10;
/// How many percentage points more of the CPU time the best-effort pod may get under canopy
/// than under the fair scheduler. Same runs: fair 6.3 | canopy 6.7; fair 4.4, 2.8, 5.7 |
/// canopy 6.6, 7.6, 5.0, 6.1, 5.9; fair 2.4 | canopy 4.6 (within a boot, canopy's worst minus fair's best: 4.8 points).
const BEST_EFFORT_MARGIN_POINTS: f64 = 6.0;

/// The range every window's hog-a : hog-b ratio (cpu.weight 200:100) must fall in. It catches
/// the failure it was written for, with margin on both sides. Busybox guest, 2026-12-03, host
/// load 10-14, per 6 s window:
/// - before the fix (vtime floor on every enqueue), the daemon on policies/default.toml:
///   1.55, 1.58, 1.51, 1.61:1 (root alone in the same boot: 1.92, 1.87, 1.87, 1.91:1);
/// - with it, this test (combined over the four windows in brackets): 2.02, 1.85, 2.17,
///   2.07:1 [2.02] (fair 1.93:1; the floor fix alone); as committed (7cdbd15): 2.08, 2.05,
///   2.03, 2.28:1 [2.11] (fair 2.02:1); 1.77, 1.88, 1.96, 2.10:1 [1.93] (fair 2.00:1); 1.83,
///   1.91, 1.86, 2.02:1 [1.90] (fair 2.01:1); 2.06, 1.81, 1.95, 1.88:1 [1.92] (fair 2.00:1).
///   Lowest window 1.77, highest 2.28;
/// - a variant pricing runs at the larger W_eq of their two ends, reverted: 1.86, 1.80, 1.73,
///   1.87:1 (fair 1.42:1); 1.91, 1.73, 1.88, 2.25:1 (fair 2.00:1); 1.88, 1.84, 1.86, 1.76:1
///   (fair 2.00:1);
/// - with one weight scale for tasks and cgroups (df0e740, session 10, 2026-12-04, host load
///   0.8-4.1 with a cold build beside it), five boots: 1.98, 1.97, 2.02, 1.99:1 [1.99];
///   1.99, 2.00, 2.03, 1.99:1 [2.00]; 1.96, 2.08, 1.93, 2.00:1 [1.99]; 1.98, 2.00, 1.92,
///   1.98:1 [1.97]; 1.92, 2.03, 2.01, 1.93:1 [1.97] (fair 2.00-2.01:1). Lowest window 1.92,
///   highest 2.08. Before it, the last CI run on record had a window at 1.70:1 (the other three 1.94, 2.10, 1.93).
///
/// The range is issue 12's 2:1 within 10% for every 6 s window, which the five boots of the
/// kept code hold with 0.12 to spare on each side.
const SERVICES_WINDOW_RATIO: (f64, f64) = (1.80, 2.20);
/// The consecutive windows measured after the daemon loaded the root.
const SERVICE_WINDOWS: [&str; 4] = ["services-w1", "services-w2", "services-w3", "services-w4"];

/// Two services as systemd makes them (`CPUWeight=` 200 and 100), a 2-thread hog each, started
/// while the fair scheduler runs: they are already running when the root loads. The last line
/// waits (up to 5 s) until each service holds its hog's three threads (the main one and two
/// spinning): the fair reference split that used to follow gave them 7 s, and without it the
/// daemon's start is all that stands between the hogs' start and the root's load.
const SERVICES: &str = r#"
s=/sys/fs/cgroup/system.slice
mkdir -p $s/hog-a.service $s/hog-b.service
echo +cpu > $s/cgroup.subtree_control
echo 200 > $s/hog-a.service/cpu.weight
echo 100 > $s/hog-b.service/cpu.weight
sh -c "echo \$\$ > $s/hog-a.service/cgroup.procs; exec canopy-guest hog --threads 2" & HOG_A=$!
sh -c "echo \$\$ > $s/hog-b.service/cgroup.procs; exec canopy-guest hog --threads 2" & HOG_B=$!
i=0; until [ $(wc -l < $s/hog-a.service/cgroup.threads) -ge 3 ] && [ $(wc -l < $s/hog-b.service/cgroup.threads) -ge 3 ] || [ $i -ge 100 ]; do usleep 50000; i=$((i+1)); done
"#;
const SERVICE_SPLIT: &str = "--group system.slice/hog-a.service:-:0 \
    --group system.slice/hog-b.service:-:0 --seconds 6 --keep";

const TREE: &str = r#"
k=/sys/fs/cgroup/kubepods.slice
mkdir -p $k/kubepods-burstable.slice $k/kubepods-besteffort.slice $k/kubepods-podg.slice
echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
echo +cpu > $k/cgroup.subtree_control
echo +cpu > $k/kubepods-burstable.slice/cgroup.subtree_control
echo +cpu > $k/kubepods-besteffort.slice/cgroup.subtree_control
echo 30 > $k/kubepods-burstable.slice/cpu.weight
echo 1 > $k/kubepods-besteffort.slice/cpu.weight
echo 20 > $k/kubepods-podg.slice/cpu.weight
echo "50000 100000" > $k/kubepods-podg.slice/cpu.max
"#;

const PODS: &str =
    "--group kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda.slice:20:2 \
    --group kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podb.slice:10:2 \
    --group kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podc.slice:1:2 \
    --group kubepods.slice/kubepods-podg.slice:-:2 --seconds 8 --warmup 2 --keep";

/// (pod a : pod b, guaranteed pod's CPUs, best effort's share) of a split.
fn figures(split: &serde_json::Value) -> (f64, f64, f64) {
    let group = |i: usize| &split["groups"][i];
    let window = split["window_s"].as_f64().unwrap_or(f64::NAN);
    (
        split["ratio"].as_f64().unwrap_or(f64::NAN),
        group(3)["cpu_seconds"].as_f64().unwrap_or(f64::NAN) / window,
        group(2)["share"].as_f64().unwrap_or(f64::NAN),
    )
}

#[test]
fn kubernetes_policy_keeps_kubelets_per_pod_weights_and_limits() -> anyhow::Result<()> {
    let script = format!(
        r#"
{TREE}
canopy-guest cpu-split {PODS} --fair-cgroup-mode smp --kind pods-fair
{SERVICES}
{services_fair}{daemon}
for w in 1 2 3 4; do canopy-guest cpu-split {SERVICE_SPLIT} --warmup 0 --kind services-w$w; done
kill $HOG_A $HOG_B; wait $HOG_A $HOG_B || true
canopy-guest cpu-split {PODS} --kind pods-canopy
canopy status --json --interval-ms 200 > /tmp/status.json || true
canopy-guest report k8s-daemon sched_ext="$(cat /sys/kernel/sched_ext/state)" status=@/tmp/status.json
kill -INT $DAEMON; wait $DAEMON || true
"#,
        services_fair = fair_reference(&format!(
            "canopy-guest cpu-split {SERVICE_SPLIT} --warmup 1 --fair-cgroup-mode smp --kind services-fair\n"
        )),
        daemon = start_daemon("scx"),
    );
    let outcome = crate::scenario("kubernetes-policy")
        .with_file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies/kubernetes.toml"),
            "/etc/canopy/policy.toml",
        )
        .script(script)
        .timeout(Duration::from_secs(400))
        .run()?;
    println!("{}", outcome.summary());
    let daemon = outcome.result("k8s-daemon")?;
    assert_eq!(daemon["sched_ext"], "enabled", "{daemon}");
    assert_eq!(daemon["status"]["mode"], "scx", "{daemon}");
    let owned: Vec<&str> = daemon["status"]["groups"]
        .as_array()
        .map(|groups| groups.iter().filter_map(|g| g["group"].as_str()).collect())
        .unwrap_or_default();
    for group in ["k8s-besteffort", "k8s-burstable", "k8s-guaranteed"] {
        assert!(owned.contains(&group), "{group} owns no cgroup: {owned:?}");
    }
    let services_fair = fair_reference_result(&outcome, "services-fair")?
        .map(|split| split["ratio"].as_f64().unwrap_or(f64::NAN));
    let services: Vec<f64> = SERVICE_WINDOWS
        .iter()
        .map(|kind| {
            outcome
                .result(kind)
                .map(|split| split["ratio"].as_f64().unwrap_or(f64::NAN))
        })
        .collect::<Result<_, _>>()?;
    let cpu_seconds = |group: usize| -> f64 {
        SERVICE_WINDOWS
            .iter()
            .filter_map(|kind| outcome.result(kind).ok())
            .map(|split| {
                split["groups"][group]["cpu_seconds"]
                    .as_f64()
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let combined = cpu_seconds(0) / cpu_seconds(1).max(1e-9);
    let under_fair = services_fair.map_or(String::new(), |ratio| format!("fair {ratio:.2}:1, "));
    println!(
        "services started before the root, cpu.weight 200:100: {under_fair}\
         canopy {combined:.2}:1 over the four windows, {} in consecutive 6 s windows",
        services
            .iter()
            .map(|ratio| format!("{ratio:.2}:1"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (fair_ratio, fair_g, fair_be) = figures(outcome.result("pods-fair")?);
    let (ratio, guaranteed, best_effort) = figures(outcome.result("pods-canopy")?);
    println!(
        "kubepods: pod a : pod b fair {fair_ratio:.2}:1, canopy {ratio:.2}:1 (weights 2:1); \
         guaranteed pod fair {fair_g:.3} CPU, canopy {guaranteed:.3} CPU (limit 0.5); \
         best effort fair {:.1}%, canopy {:.1}%",
        fair_be * 100.0,
        best_effort * 100.0
    );
    // Gated against the fair scheduler's figures from the same boot: with 8 hogs on 2 CPUs
    // and the guaranteed pod throttled half of each period, neither scheduler holds the
    // weights' 2:1 between pod a and pod b exactly (fair 1.46-1.76:1 in four splits).
    let error = |ratio: f64| (ratio / 2.0 - 1.0).abs();
    assert!(
        error(ratio) <= error(fair_ratio) + RATIO_ERROR_MARGIN,
        "pod a : pod b under canopy {ratio:.2}:1, fair scheduler {fair_ratio:.2}:1 (weights 2:1)"
    );
    assert!(
        guaranteed <= 0.52,
        "guaranteed pod {guaranteed:.3} CPU, limit 0.5"
    );
    assert!(
        (best_effort - fair_be) * 100.0 <= BEST_EFFORT_MARGIN_POINTS,
        "best effort {:.1}% under canopy, {:.1}% under the fair scheduler",
        best_effort * 100.0,
        fair_be * 100.0
    );
    let (low, high) = SERVICES_WINDOW_RATIO;
    for (window, ratio) in SERVICE_WINDOWS.iter().zip(&services) {
        assert!(
            (low..=high).contains(ratio),
            "{window}: services started before the root split {ratio:.2}:1 for cpu.weight \
             200:100 (all windows: {services:?})"
        );
    }
    assert!(
        outcome.kernel_warnings().is_empty(),
        "{:?}",
        outcome.kernel_warnings()
    );
    Ok(())
}
