// SPDX-License-Identifier: GPL-2.0-only
//! The guest workloads and Debian's tools work in the test kernel: the wakeup-latency probe
//! (timer and pipe), the fork/thread/rename storm, `dmesg`, `latency` (cyclictest under hackbench), `wait-for`, `report key=@file`, `xattr` on a cgroup, `run-as`, `pingpong`, `proc-stat`, `task-attrs`, and hackbench, cyclictest and
//! stress-ng from the host's Debian packages. Guards the harness itself (library resolution,
//! result parsing) so scheduler scenarios can rely on it.

use std::time::Duration;

#[test]
fn guest_workloads_and_debian_tools_run() -> anyhow::Result<()> {
    let outcome = crate::scenario("workloads")
        .with_debian_tools(&["cyclictest", "hackbench", "stress-ng"])
        .script(
            "canopy-guest wakeprobe --mode timer --threads 2 --seconds 2 --kind wake-timer\n\
             canopy-guest wakeprobe --mode pipe --threads 2 --seconds 2 --kind wake-pipe\n\
             canopy-guest storm --threads 1000 --renames 2 --forks 100 --execs 20 --hold-ms 50\n\
             canopy-guest exec --check --kind hackbench -- hackbench -T -p -l 50 -g 2\n\
             canopy-guest exec --check --kind cyclictest -- cyclictest -t 1 -i 1000 -D 2 -q -m\n\
             canopy-guest exec --check --kind stress-ng -- stress-ng --cpu 1 --timeout 2 --quiet\n\
             canopy-guest latency --seconds 3 --load 'hackbench -T -p -g 2 -l 100000000' --kind latency-hackbench\n\
             (sleep 1; echo daemon-ready > /tmp/ready.log) & helper=$!\n\
             canopy-guest wait-for --file /tmp/ready.log --contains daemon-ready --pid $helper --timeout 20\n\
             canopy-guest report waited log=@/tmp/ready.log\n\
             mkdir /sys/fs/cgroup/app.scope\n\
             canopy-guest xattr set /sys/fs/cgroup/app.scope user.xdg.inactive-since -1\n\
             canopy-guest xattr get /sys/fs/cgroup/app.scope user.xdg.inactive-since\n\
             canopy-guest exec --kind run-as -- canopy-guest run-as --uid 65534 -- id -u\n\
             canopy-guest pingpong --seconds 2\n\
             canopy-guest hog --threads 1 --seconds 3 --comm attr-probe & hog=$!\n\
             canopy-guest proc-stat --pid $hog --seconds 1\n\
             canopy-guest task-attrs --comm-prefix attr-probe\n\
             wait $hog\n\
             canopy-guest dmesg --grep 'Linux version' --kind dmesg-version\n",
        )
        .timeout(Duration::from_secs(300))
        .run()?;
    println!("{}", outcome.summary());

    for kind in ["wake-timer", "wake-pipe"] {
        let probe = outcome.result(kind)?;
        let samples = probe["samples"].as_u64().unwrap_or(0);
        let p50 = probe["p50_us"].as_f64().unwrap_or(f64::NAN);
        let p99 = probe["p99_us"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{kind}: {samples} samples, p50 {p50:.0} us, p99 {p99:.0} us, max {} us",
            probe["max_us"]
        );
        // 2 threads x ~1000 wakeups/s x 2 s, minus slow TCG periods.
        assert!(samples >= 1000, "{kind}: too few samples: {probe}");
        assert!(p50 > 0.0 && p50 <= p99, "{kind}: {probe}");
    }
    let storm = outcome.result("storm")?;
    assert_eq!(storm["threads"], 1000, "{storm}");
    println!(
        "storm: 1000 threads + 100 forks + 20 execs created in {:.3} s",
        storm["creation_s"].as_f64().unwrap_or_default()
    );
    for kind in ["hackbench", "cyclictest", "stress-ng"] {
        let run = outcome.result(kind)?;
        assert_eq!(run["success"], true, "{kind}: {run}");
    }
    let latency = outcome.result("latency-hackbench")?;
    println!(
        "cyclictest -i 1777 under hackbench -T -p -g 2 (fair, 3 s): p50 {} us, p99 {} us, max {} us, {} samples",
        latency["p50_us"], latency["p99_us"], latency["max_us"], latency["samples"]
    );
    assert!(latency["samples"].as_u64().unwrap_or(0) > 100, "{latency}");
    assert_eq!(outcome.result("waited")?["log"], "daemon-ready\n");
    let xattr = outcome.result("xattr")?;
    assert_eq!(xattr["value"], "-1", "user xattrs on cgroupfs: {xattr}");
    let run_as = outcome.result("run-as")?;
    assert_eq!(run_as["stdout"], "65534\n", "{run_as}");
    let pingpong = outcome.result("pingpong")?;
    println!(
        "pipe ping-pong: {:.0} round trips/s",
        pingpong["round_trips_per_s"].as_f64().unwrap_or_default()
    );
    assert!(
        pingpong["round_trips"].as_u64().unwrap_or(0) > 100,
        "{pingpong}"
    );
    let hog_usage = outcome.result("proc-stat")?;
    assert!(
        hog_usage["cpu_fraction"].as_f64().unwrap_or(0.0) > 0.3,
        "a spinning hog used little CPU: {hog_usage}"
    );
    let attrs = outcome.result("task-attrs")?;
    assert_eq!(attrs["count"], 1, "{attrs}");
    assert_eq!(
        attrs["tasks"][0]["uclamp_max"], 1024,
        "UCLAMP_TASK is on in the test kernel: {attrs}"
    );
    let dmesg = outcome.result("dmesg-version")?;
    let line = dmesg["lines"][0].as_str().unwrap_or_default();
    assert!(
        line.contains(&outcome.kernel_release),
        "dmesg has no Linux version line naming {}: {dmesg}",
        outcome.kernel_release
    );
    Ok(())
}
