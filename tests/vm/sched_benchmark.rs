// SPDX-License-Identifier: GPL-2.0-only
//! Scheduler benchmark (not a gate): canopy against the fair scheduler and schedqos's mapping in
//! one VM run; writes target/sched-bench.md (see docs/scheduler-benchmark.md).
use std::time::Duration;

use crate::support::{start_root_with_children, STOP_ROOT};

/// The scheduler benchmark (issue 4): in one VM run, canopy against the fair scheduler with the
/// same cpu.weight settings and against schedqos's mapping: share accuracy (largest relative
/// error across two groups at 200:100), interactive p99 wakeup latency under hackbench (with the
/// idle floor and the platform floor under load: SCHED_FIFO cyclictest under the fair scheduler),
/// and hackbench -T -p -l 300 -g 4 run time. Prints a markdown table and writes it to
/// target/sched-bench.md. A benchmark, not a gate: it asserts only that every figure exists.
#[test]
fn benchmark_canopy_against_fair_and_schedqos() -> anyhow::Result<()> {
    let script = format!(
        r#"
LOAD='hackbench -T -p -g 2 -l 100000000'
canopy-guest latency --seconds 8 --histogram-us 200000 --kind idle-floor
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 8 --warmup 1 --keep --kind split-fair
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 8 --warmup 1 --keep --fair-cgroup-mode smp --kind split-fair-smp
canopy-guest latency --seconds 8 --histogram-us 200000 --load "$LOAD" --kind latency-fair
canopy-guest latency --seconds 8 --histogram-us 200000 --load "$LOAD" --kind latency-fifo -- -p 50
canopy-guest exec --kind hackbench-fair -- hackbench -T -p -l 300 -g 4
autogroup=$(cat /proc/sys/kernel/sched_autogroup_enabled)
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
canopy scheduler exec --nice -4 -- canopy-guest latency --seconds 8 --histogram-us 200000 --load "canopy scheduler exec --nice 4 --batch -- $LOAD" --kind latency-schedqos
echo $autogroup > /proc/sys/kernel/sched_autogroup_enabled
{start}
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 8 --warmup 1 --keep --kind split-canopy
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 20 > /tmp/tagger.log 2>&1 &
canopy-guest latency --seconds 8 --histogram-us 200000 --load "$LOAD" --kind latency-canopy
canopy-guest exec --kind hackbench-canopy -- hackbench -T -p -l 300 -g 4
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let config = r#"{"default_class":"BACKGROUND","groups":[
        {"cgroup":"ta","admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"tb","admit":["canopy_child"],"attach_canopy_child":true}]}"#;
    let outcome = crate::scenario("sched-bench")
        .with_debian_tools(&["cyclictest", "hackbench"])
        .with_file_contents("/etc/canopy-sched.json", config, 0o644)
        .timeout(Duration::from_secs(400))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let field = |kind: &str, key: &str| -> anyhow::Result<f64> {
        Ok(outcome.result(kind)?[key].as_f64().unwrap_or(f64::NAN))
    };
    let ms = |us: f64| us / 1000.0;
    let idle = field("idle-floor", "p99_us")?;
    let latency = |kind: &str| -> anyhow::Result<String> {
        Ok(format!(
            "{:.2} ms | {:.2} ms",
            ms(field(kind, "p99_us")?),
            ms(field(kind, "p90_us")?)
        ))
    };
    let mut table = String::from(
        "| scheduler | share error (200:100, 2+2 hogs) | cyclictest p99 under hackbench | p90 | hackbench -T -p -l 300 -g 4 |\n|---|---|---|---|---|\n",
    );
    let fair_mode = |kind: &str| -> anyhow::Result<String> {
        Ok(outcome.result(kind)?["fair_cgroup_mode"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned())
    };
    table += &format!(
        "| fair (cpu.weight; kernel default group shares: `{}`) | {:.2}% | {} | {:.2} s |\n",
        fair_mode("split-fair")?,
        field("split-fair", "max_share_error")? * 100.0,
        latency("latency-fair")?,
        field("hackbench-fair", "duration_s")?
    );
    table += &format!(
        "| fair, classic group shares (`{}`) | {:.2}% | n/a | n/a | n/a |\n",
        fair_mode("split-fair-smp")?,
        field("split-fair-smp", "max_share_error")? * 100.0
    );
    table += &format!(
        "| schedqos mapping (nice -4 / SCHED_BATCH nice 4) | n/a | {} | n/a |\n",
        latency("latency-schedqos")?
    );
    table += &format!(
        "| canopy (root + canopy_child) | {:.2}% | {} | {:.2} s |\n",
        field("split-canopy", "max_share_error")? * 100.0,
        latency("latency-canopy")?,
        field("hackbench-canopy", "duration_s")?
    );
    table += &format!(
        "| platform floor: SCHED_FIFO probe under fair | n/a | {} | n/a |\n",
        latency("latency-fifo")?
    );
    table += &format!(
        "\nIdle floor (cyclictest p99, no load): {:.2} ms. {}\n",
        ms(idle),
        outcome.summary()
    );
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sched-bench.md");
    std::fs::write(&out, &table)?;
    Ok(())
}
