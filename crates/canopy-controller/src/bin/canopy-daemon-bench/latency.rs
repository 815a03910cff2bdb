//! `canopy-daemon-bench latency`: how fast the daemon follows what happens, as a table against
//! its targets (see the binary's doc). An in-process daemon in fallback mode, at nice -5 as the
//! unit runs it, over a cgroup scope of its own; `canopy-testload` workloads.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_controller::testing::host::{poll_every, RENAME_STORM_RULES, TESTLOAD_POLICY};

use super::{run_daemon_for, testload, Scoped};

/// One row of a benchmark table: what was measured, its target, the figure, whether it is met.
struct Row {
    what: String,
    target: String,
    measured: String,
    met: bool,
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}\n");
    println!("| | target | measured | met |");
    println!("|---|---|---|---|");
    for row in rows {
        let met = if row.met { "yes" } else { "NO" };
        println!(
            "| {} | {} | {} | {met} |",
            row.what, row.target, row.measured
        );
    }
}

/// The `q` quantile (0..=1) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Polls `check` every 50 µs (finer than the host tests' 1 ms, to resolve sub-millisecond
/// latencies) until it holds or `limit` passes; how long it took.
fn poll(limit: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    poll_every(Duration::from_micros(50), limit, check)
}

/// (nice, policy) of a task, `None` once it is gone.
fn attrs(tid: u32) -> Option<(i32, u32)> {
    canopy_controller::fallback::sched_getattr(tid)
        .ok()
        .map(|a| (a.sched_nice, a.sched_policy))
}

const INTERACTIVE: Option<(i32, u32)> = Some((-4, 0));
const BACKGROUND: Option<(i32, u32)> = Some((4, 3));

/// A `canopy-testload` workload: its stdin (closing it ends the workload) and pid.
fn testload_spawn(args: &[&str]) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(testload())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The lines a workload prints before `ready`.
fn until_ready(out: &mut BufReader<std::process::ChildStdout>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 || l.trim() == "ready" {
            return lines;
        }
        lines.push(l.trim().to_string());
    }
}

fn control(
    sock: &std::path::Path,
    request: &canopy_controller::protocol::Request,
) -> serde_json::Value {
    let reply = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(canopy_controller::server::call(
            sock,
            request,
            Duration::from_secs(10),
        ))
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    reply.result.unwrap_or_default()
}

fn move_pid(cgroup: &std::path::Path, pid: u32) {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
}

fn set_focus_xattr(dir: &std::path::Path, value: &str) {
    canopy_sys::cgroup::write_xattr(dir, "user.xdg.inactive-since", value.as_bytes())
        .expect("focus xattr");
}

/// An idle `canopy-testload` in `cgroup`, once the daemon has tagged it USER_INTERACTIVE.
fn idle_in(cgroup: &std::path::Path) -> std::process::Child {
    let (child, mut out) = testload_spawn(&["idle"]);
    // Its pid line read before the pipe closes (a write to a closed pipe would end it).
    out.read_line(&mut String::new()).unwrap();
    move_pid(cgroup, child.id());
    poll(Duration::from_secs(10), || attrs(child.id()) == INTERACTIVE).expect("workload tagged");
    child
}

/// The rename burst: 1,000 threads created and renamed at once, each to a name the policy
/// classes BACKGROUND; the daemon's own rename → applied percentiles.
fn rename_burst(scope: &std::path::Path, sock: &std::path::Path, rows: &mut Vec<Row>) {
    let (mut child, mut out) = testload_spawn(&["threads", "1000", "w-"]);
    let pid = child.id();
    move_pid(scope, pid);
    poll(Duration::from_secs(10), || attrs(pid) == INTERACTIVE).expect("workload tagged");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let lines = until_ready(&mut out);
    let created_ms: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("elapsed_ms "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let tids: Vec<u32> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    let all = poll(Duration::from_secs(10), || {
        tids.iter().all(|&t| attrs(t) == BACKGROUND)
    });
    let status = control(sock, &canopy_controller::protocol::Request::Status {});
    let p50 = status["apply_latency_p50_us"].as_u64().unwrap_or(u64::MAX);
    let p99 = status["apply_latency_p99_us"].as_u64().unwrap_or(u64::MAX);
    rows.push(Row {
        what: format!(
            "1,000 threads created+renamed in {created_ms} ms: rename → applied p50 / p99"
        ),
        target: "p99 < 10 ms".into(),
        measured: format!("{p50} µs / {p99} µs"),
        met: p99 < 10_000,
    });
    rows.push(Row {
        what: "1,000 renamed threads: all tagged after the workload reported".into(),
        target: "all, < 1 s".into(),
        measured: all.map_or("NOT ALL".into(), ms),
        met: all.is_some_and(|d| d < Duration::from_secs(1)),
    });
    drop(stdin);
    let _ = child.wait();
}

/// `rounds` moves into a `minimized` group and back: time to the demotion and the restore.
fn moves(
    scope: &std::path::Path,
    sock: &std::path::Path,
    scope_name: &str,
    rounds: usize,
    rows: &mut Vec<Row>,
) {
    control(
        sock,
        &canopy_controller::protocol::Request::State {
            cgroup: format!("{scope_name}/min"),
            state: "minimized".into(),
        },
    );
    let mut child = idle_in(&scope.join("a"));
    let pid = child.id();
    let (mut demote, mut restore) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        move_pid(&scope.join("min"), pid);
        demote.push(poll(Duration::from_secs(5), || attrs(pid) == BACKGROUND).expect("demoted"));
        move_pid(&scope.join("a"), pid);
        restore.push(poll(Duration::from_secs(5), || attrs(pid) == INTERACTIVE).expect("restored"));
    }
    demote.sort();
    restore.sort();
    let worst = *demote.last().unwrap();
    rows.push(Row {
        what: format!("move into a minimized group → demoted (p50 / worst of {rounds})"),
        target: "< 10 ms".into(),
        measured: format!("{} / {}", ms(quantile(&demote, 0.5)), ms(worst)),
        met: worst < Duration::from_millis(10),
    });
    rows.push(Row {
        what: format!("move back → restored (p50 / worst of {rounds})"),
        target: "< 10 ms".into(),
        measured: format!(
            "{} / {}",
            ms(quantile(&restore, 0.5)),
            ms(*restore.last().unwrap())
        ),
        met: *restore.last().unwrap() < Duration::from_millis(10),
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// The focus xattr: `-1` on an unfocused app restores its tasks; `rounds` times.
fn focus(scope: &std::path::Path, rounds: usize, rows: &mut Vec<Row>) {
    let app = scope.join("app");
    let mut child = idle_in(&app);
    let pid = child.id();
    let mut refocus = Vec::new();
    for _ in 0..rounds {
        set_focus_xattr(&app, "123456789");
        poll(Duration::from_secs(5), || attrs(pid) == BACKGROUND).expect("unfocused");
        set_focus_xattr(&app, "-1");
        refocus
            .push(poll(Duration::from_secs(5), || attrs(pid) == INTERACTIVE).expect("refocused"));
    }
    refocus.sort();
    let worst = *refocus.last().unwrap();
    rows.push(Row {
        what: format!("focus xattr `-1` → restored (p50 / worst of {rounds})"),
        target: "< 100 ms".into(),
        measured: format!("{} / {}", ms(quantile(&refocus, 0.5)), ms(worst)),
        met: worst < Duration::from_millis(100),
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// A 1 s rename storm by a managed task: `status` round trips meanwhile, and how long a task
/// tagged mid-storm takes to reach the crash record.
fn storm(
    scope: &std::path::Path,
    sock: &std::path::Path,
    state: &std::path::Path,
    rows: &mut Vec<Row>,
) {
    let (mut child, mut out) = testload_spawn(&["renamestorm", "1"]);
    move_pid(&scope.join("storm"), child.id());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, sock) = (stop.clone(), sock.to_path_buf());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let reply = rt.block_on(canopy_controller::server::call(
                    &sock,
                    &canopy_controller::protocol::Request::Status {},
                    Duration::from_secs(10),
                ));
                latencies.push(started.elapsed());
                assert!(reply.is_ok_and(|r| r.ok), "status during the storm");
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (mut sleeper, _sleeper_out) = testload_spawn(&["idle"]);
    move_pid(&scope.join("a"), sleeper.id());
    let record = format!("\"tid\":{},", sleeper.id());
    let flushed = poll(Duration::from_secs(10), || {
        std::fs::read_to_string(state).is_ok_and(|text| text.contains(&record))
    });
    let renames: u64 = until_ready(&mut out)
        .first()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = prober.join().unwrap();
    latencies.sort();
    let p99 = quantile(&latencies, 0.99);
    rows.push(Row {
        what: format!(
            "`status` during a 1 s rename storm ({renames} renames): p50 / p99 / worst of {}",
            latencies.len()
        ),
        target: "p99 < 50 ms".into(),
        measured: format!(
            "{} / {} / {}",
            ms(quantile(&latencies, 0.5)),
            ms(p99),
            ms(*latencies.last().unwrap())
        ),
        met: p99 < Duration::from_millis(50),
    });
    rows.push(Row {
        what: "a task tagged mid-storm → in the crash record".into(),
        target: "≤ 2 s (two flush periods)".into(),
        measured: flushed.map_or("not within 10 s".into(), ms),
        met: flushed.is_some_and(|d| d <= Duration::from_secs(2)),
    });
    drop(stdin);
    let _ = child.wait();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

pub fn latency() {
    let s = Scoped::with_policy("latency", &format!("{RENAME_STORM_RULES}{TESTLOAD_POLICY}"));
    for sub in ["a", "min", "app", "storm"] {
        std::fs::create_dir_all(s.cg.join(sub)).unwrap();
    }
    let mut opts = s.opts();
    let state = s.dir.join("fallback-state.json");
    opts.state_file = Some(state.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    opts.on_ready = Some(ready_tx);
    let (cg, scope, sock) = (s.cg.clone(), s.scope.clone(), s.dir.join("control.sock"));
    // The daemon's threads inherit nice -5, as deploy/systemd/canopy.service runs it.
    // SAFETY: setpriority on the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -5) };
    let rows = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = rows.clone();
    run_daemon_for(opts, move || {
        ready_rx.blocking_recv().expect("daemon ready");
        let mut rows = Vec::new();
        rename_burst(&cg, &sock, &mut rows);
        moves(&cg, &sock, &scope, 20, &mut rows);
        focus(&cg, 3, &mut rows);
        storm(&cg, &sock, &state, &mut rows);
        *out.lock().unwrap() = rows;
    });
    print_table(
        &format!(
            "daemon latency (fallback mode, in-process daemon, {}; load average {})",
            if cfg!(debug_assertions) {
                "test build"
            } else {
                "release build"
            },
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        ),
        &rows.lock().unwrap(),
    );
}
