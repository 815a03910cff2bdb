//! `canopy bench policy`: a benchmark, not a test. Generates a policy with N process rules and
//! M groups (mostly literal names, some globs and regexes, like real policies), times compiling
//! it from text, then times matching tasks against it, and prints median and worst figures.

use std::fmt::Write as _;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use canopy_policy::TaskFacts;

const CLASSES: [&str; 5] = [
    "USER_INTERACTIVE",
    "USER_INITIATED",
    "DEFAULT",
    "UTILITY",
    "BACKGROUND",
];

/// A policy text with `rules` rules and `groups` groups.
pub(crate) fn generated_policy(rules: usize, groups: usize) -> String {
    let mut text = String::new();
    for index in 0..rules {
        let class = CLASSES[index % CLASSES.len()];
        let _ = writeln!(text, "[[rules]]");
        match index % 20 {
            0 => {
                let _ = writeln!(text, "comm = \"tool{index}-*\"");
            }
            1 => {
                let _ = writeln!(text, "exe = \"/opt/app{index}/bin/*\"");
            }
            2 if index % 100 == 2 => {
                let _ = writeln!(text, "cmdline = \"--job={index}( |$)\"");
            }
            3 => {
                let _ = writeln!(
                    text,
                    "comm = \"svc{index}\"\ncgroup = \"system.slice/svc{index}.service\""
                );
            }
            4 => {
                let _ = writeln!(text, "exe = \"prog{index}\"\nuid = {}", 1000 + index % 7);
            }
            _ => {
                let _ = writeln!(text, "comm = \"proc{index}\"");
            }
        }
        let _ = writeln!(text, "class = \"{class}\"");
    }
    for index in 0..groups {
        let _ = writeln!(text, "[groups.g{index}]");
        match index % 2 {
            0 => {
                let _ = writeln!(text, "path = \"tenants/t{index}/*\"");
            }
            _ => {
                let _ = writeln!(text, "path = \"system.slice/unit{index}-*.service\"");
            }
        }
        let _ = writeln!(
            text,
            "weight = {}\nceiling = \"USER_INITIATED\"\nscheduler = \"canopy\"",
            50 + index % 200
        );
        let _ = writeln!(
            text,
            "[groups.g{index}.states.idle]\nceiling = \"BACKGROUND\"\nafter_s = 30"
        );
    }
    text
}

/// CPU time of the calling thread: unlike wall time, it barely moves when other processes
/// compete for the CPUs, so the figures stay comparable on a shared machine.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub(crate) fn policy(rules: usize, groups: usize) -> Result<ExitCode> {
    let text = generated_policy(rules, groups);
    println!(
        "policy: {rules} rules, {groups} groups, {} KiB of TOML",
        text.len() / 1024
    );
    let mut compile_times = Vec::new();
    let mut compile_cpu = Vec::new();
    let mut plan = None;
    for _ in 0..7 {
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        let compiled = canopy_policy::compile_str("bench.toml", &text);
        compile_cpu.push(thread_cpu_time() - cpu_start);
        compile_times.push(start.elapsed());
        plan = Some(
            compiled
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}",
                        e.diagnostics
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .context("generated policy")?
                .plan,
        );
    }
    let plan = plan.expect("compiled at least once");
    println!(
        "compile (parse + validate + build): median {:?} wall, {:?} CPU; min {:?} wall over 7 runs",
        median(&mut compile_times.clone()),
        median(&mut compile_cpu),
        compile_times.iter().min().unwrap()
    );

    // Tasks: a mix of hits on literal names, glob hits, cgroup rules and misses.
    let mut names = Vec::new();
    for index in 0..2_000usize {
        let n = (index * 7919) % rules.max(1);
        names.push((
            match index % 4 {
                0 => format!("proc{n}"),
                1 => format!("tool{}-worker", n - n % 20),
                2 => format!("svc{}", n - n % 20 + 3),
                _ => format!("unknown{index}"),
            },
            format!("/usr/bin/prog{n}"),
            if index % 2 == 0 {
                format!("tenants/t{}/job", (index * 2) % groups.max(1))
            } else {
                format!("system.slice/svc{}.service", n - n % 20 + 3)
            },
            format!("/usr/bin/prog{n} --job={n} --verbose"),
        ));
    }
    let mut match_times = Vec::with_capacity(names.len() * 5);
    let mut hits = 0usize;
    let mut group_hits = 0usize;
    for _ in 0..5 {
        for (comm, exe, cgroup, cmdline) in &names {
            let task = TaskFacts {
                comm,
                thread_name: comm,
                exe: Some(exe),
                cmdline: Some(cmdline),
                cgroup,
                uid: 1000,
                user: Some("user"),
                parent_comm: Some("systemd"),
            };
            let start = Instant::now();
            let matched = black_box(plan.match_task(black_box(&task)));
            let group = black_box(plan.group_for_cgroup(cgroup));
            match_times.push(start.elapsed());
            hits += usize::from(matched.is_some());
            group_hits += usize::from(group.is_some());
        }
    }
    let worst = *match_times.iter().max().unwrap();
    let mut sorted = match_times.clone();
    let p99 = {
        sorted.sort();
        sorted[sorted.len() * 99 / 100]
    };
    println!(
        "match one task (match_task + group_for_cgroup): median {:?}, p99 {:?}, worst {:?} over {} matches ({} rule hits, {} group hits)",
        median(&mut match_times),
        p99,
        worst,
        names.len() * 5,
        hits,
        group_hits
    );
    Ok(ExitCode::SUCCESS)
}
