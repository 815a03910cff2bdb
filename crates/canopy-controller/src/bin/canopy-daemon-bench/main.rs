//! canopy-daemon-bench: the controller daemon's benchmarks (figures, not pass/fail tests).
//! - `events`: events handled per second on one core (fork/comm/exit through the controller
//!   with the real /proc source and the real sched_setattr backend on live threads, and the
//!   pure decision path with an in-memory source and a recording backend). Target ≥ 50,000/s.
//! - `idle SECONDS`: the daemon's CPU use while idle (scoped to an empty cgroup; events from the
//!   rest of the machine still arrive and are dropped). Target < 0.5 %.
//! - `rss`: the daemon's RSS while tracking 10,000 threads. Target < 30 MB.
//! - `latency`: how fast the daemon follows what happens, in a table against its targets:
//!   1,000 threads created and renamed in a burst (rename → applied p99 < 10 ms), moves into a
//!   `minimized` group (demoted < 10 ms), a focus xattr (`-1` → restored < 100 ms), and a 1 s
//!   rename storm (control requests p99 < 50 ms; a task tagged mid-storm on record ≤ 2 s).
//!   The host tests check the same behaviour (every thread tagged, every move followed) with
//!   timeouts that only catch hangs; the numbers are measured here.
//!
//! Needs root. Uses `canopy-testload` from the same directory for live threads.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_controller::backend::{Backend, TaskSource};
use canopy_controller::controller::{Controller, ControllerConfig};
use canopy_controller::daemon::{Daemon, DaemonOptions};
use canopy_controller::event::Event;
use canopy_controller::fallback::FallbackBackend;
use canopy_controller::policy_port::PolicyPlan;
use canopy_controller::procfs::ProcSource;
use canopy_controller::testing::host::remove_cgroup_tree;
use canopy_controller::testing::{FakeSource, RecordingBackend, TestPlan, TestRule};
use canopy_policy::DaemonMode;
use canopy_sys::cgroup::CgroupHierarchy;

mod latency;

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set; applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn testload() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .with_file_name("canopy-testload")
}

fn bench_plan() -> TestPlan {
    let mut p = TestPlan::desktop();
    p.rules.insert(
        0,
        TestRule {
            name: "testload".into(),
            comm: "canopy-testload".into(),
            class: canopy_controller::testing::class::USER_INITIATED,
            threads: vec![("w-*".into(), canopy_controller::testing::class::BACKGROUND)],
            inherit: false,
        },
    );
    p
}

fn thread_events(tgid: u32, tids: &[u32], rounds: usize) -> Vec<Event> {
    let mut ev = Vec::with_capacity(tids.len() * 4 * rounds);
    for r in 0..rounds {
        for &tid in tids {
            ev.push(Event::Fork {
                parent_tid: tgid,
                parent_tgid: tgid,
                child_tid: tid,
                child_tgid: tgid,
                timestamp_ns: None,
            });
            ev.push(Event::Comm {
                tid,
                tgid,
                comm: Some(format!("w-{r}")),
                timestamp_ns: None,
            });
            ev.push(Event::Comm {
                tid,
                tgid,
                comm: Some("canopy-testload".into()),
                timestamp_ns: None,
            });
            ev.push(Event::Exit {
                tid,
                tgid,
                timestamp_ns: None,
            });
        }
    }
    ev
}

/// `count` exec events of process `pid`: each makes the controller re-read the process's facts
/// from /proc (stat, comm, exe, cmdline, status, cgroup, parent comm) and match it again.
fn exec_events(pid: u32, count: usize) -> Vec<Event> {
    (0..count)
        .map(|_| Event::Exec {
            tid: pid,
            tgid: pid,
            timestamp_ns: None,
        })
        .collect()
}

/// `rounds` process lifecycles of `child` forked from `parent`: exit, fork, exec.
fn lifecycle_events(parent: u32, child: u32, rounds: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(3 * rounds);
    for _ in 0..rounds {
        events.push(Event::Exit {
            tid: child,
            tgid: child,
            timestamp_ns: None,
        });
        events.push(Event::Fork {
            parent_tid: parent,
            parent_tgid: parent,
            child_tid: child,
            child_tgid: child,
            timestamp_ns: None,
        });
        events.extend(exec_events(child, 1));
    }
    events
}

/// Handles `events` one at a time (the daemon's loop without the source) and returns how many
/// were handled per second.
fn handle_timed<B: Backend, S: TaskSource>(
    controller: &mut Controller<B, S>,
    events: Vec<Event>,
    now: tokio::time::Instant,
) -> f64 {
    let count = events.len();
    let started = Instant::now();
    for event in events {
        controller.handle(event, now);
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn events() {
    pin_to_cpu0();
    // Pure decision path: in-memory source, recording backend.
    let mut src = FakeSource::default();
    src.spawn(100, "canopy-testload", "bench");
    let tids: Vec<u32> = (1000..3000).collect();
    for &t in &tids {
        src.thread(100, t, "canopy-testload");
    }
    let mut c = Controller::new(
        Arc::new(bench_plan()) as Arc<dyn PolicyPlan>,
        RecordingBackend::default(),
        src,
        ControllerConfig::default(),
    );
    c.rescan();
    let ev = thread_events(100, &tids, 25);
    let n = ev.len();
    let now = tokio::time::Instant::now();
    let pure = handle_timed(&mut c, ev, now);
    println!("events/s (decision path only, in-memory source, recording backend, 1 core): {pure:.0} ({n} events)");

    // Real source and real sched_setattr on 2,000 live threads.
    let mut child = Command::new(testload())
        .args(["threads", "2000", "x-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("canopy-testload next to this binary");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "go").unwrap();
    let mut tids = Vec::new();
    loop {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        let l = l.trim();
        if l == "ready" {
            break;
        }
        if let Ok(t) = l.parse::<u32>() {
            tids.push(t);
        }
    }
    let tgid = child.id();
    let mut c = Controller::new(
        Arc::new(bench_plan()) as Arc<dyn PolicyPlan>,
        FallbackBackend::new(CgroupHierarchy::system().mount_point().to_path_buf()),
        ProcSource::new(CgroupHierarchy::system().mount_point().to_path_buf()),
        ControllerConfig::default(),
    );
    // Track just this process (a full rescan would tag the whole machine).
    c.handle(
        Event::TaskMoved {
            tid: tgid,
            threadgroup: true,
            timestamp_ns: None,
        },
        now,
    );
    let ev = thread_events(tgid, &tids, 10);
    let n = ev.len();
    let real = handle_timed(&mut c, ev, now);
    let applied = c.stats.counters.tags_applied;
    println!("events/s (real /proc + sched_setattr on 2,000 live threads, 1 core): {real:.0} ({n} events, {applied} sched_setattr applied)");
    let execs = 20_000;
    let exec_rate = handle_timed(&mut c, exec_events(tgid, execs), now);
    println!("events/s (exec of a 2,000-thread process: /proc re-read + match + clamp, 1 core): {exec_rate:.0}");
    let mut small = Command::new(testload())
        .args(["idle"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let spid = small.id();
    std::thread::sleep(Duration::from_millis(100));
    c.handle(
        Event::TaskMoved {
            tid: spid,
            threadgroup: true,
            timestamp_ns: None,
        },
        now,
    );
    let small_rate = handle_timed(&mut c, exec_events(spid, execs), now);
    println!("events/s (exec of a single-threaded process: /proc re-read + match + clamp, 1 core): {small_rate:.0}");
    // Process lifecycles: fork (from a known parent) + exec + exit, against a live process.
    let mix = handle_timed(&mut c, lifecycle_events(tgid, spid, 20_000), now);
    println!("events/s (process lifecycles fork+exec+exit, real /proc + sched_setattr, 1 core): {mix:.0}");
    let _ = small.kill();
    let _ = small.wait();
    c.restore_all();
    drop(stdin);
    let _ = child.wait();
}

fn cpu_ticks_self() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

struct Scoped {
    dir: PathBuf,
    cg: PathBuf,
    scope: String,
}

impl Scoped {
    fn new(name: &str) -> Scoped {
        Scoped::with_policy(name, "[[rules]]\nname = \"testload\"\ncomm = \"canopy-testload\"\nclass = \"USER_INITIATED\"\nthreads = [{ name = \"w-*\", class = \"BACKGROUND\" }]\n")
    }

    /// A scope with `policy` (`{scope}` stands for the scope's cgroup path).
    fn with_policy(name: &str, policy: &str) -> Scoped {
        let scope = format!("canopy-bench-{}-{name}", std::process::id());
        let cg = CgroupHierarchy::system()
            .mount_point()
            .to_path_buf()
            .join(&scope);
        std::fs::create_dir_all(&cg).unwrap();
        let dir = std::env::temp_dir().join(&scope);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.toml"), policy.replace("{scope}", &scope)).unwrap();
        Scoped { dir, cg, scope }
    }
    fn opts(&self) -> DaemonOptions {
        let mut o = DaemonOptions::new(
            canopy_controller::policy_adapter::loader(vec![self.dir.join("policy.toml")]),
            self.dir.join("control.sock"),
        );
        o.mode = DaemonMode::Fallback;
        o.cgroup_scope = Some(self.scope.clone());
        o.handle_signals = false;
        o
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.cg);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_daemon_for(opts: DaemonOptions, during: impl FnOnce() + Send + 'static) {
    // the daemon's runtime as `canopy run` builds it: one thread (src/daemon_cli.rs)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.block_on(async move {
        let d = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            Daemon::start(opts).await?.run(stop).await
        });
        tokio::task::spawn_blocking(during).await.unwrap();
        let _ = tx.send(());
        d.await.unwrap().unwrap();
    });
}

fn events_handled(sock: &std::path::Path) -> u64 {
    let st = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(canopy_controller::server::call(
            sock,
            &canopy_controller::protocol::Request::Status {},
            Duration::from_secs(5),
        ));
    st.ok()
        .and_then(|r| r.result)
        .map(|v| {
            v["events"]
                .as_object()
                .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn idle(seconds: u64) {
    let s = Scoped::new("idle");
    let opts = s.opts();
    let sock = s.dir.join("control.sock");
    let hz = 100.0; // USER_HZ
    let report = Arc::new(std::sync::Mutex::new(String::new()));
    let r2 = report.clone();
    run_daemon_for(opts, move || {
        std::thread::sleep(Duration::from_secs(2));
        let e0 = events_handled(&sock);
        let t0 = cpu_ticks_self();
        let w0 = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let cpu = (cpu_ticks_self() - t0) as f64 / hz;
        let wall = w0.elapsed().as_secs_f64();
        let events = events_handled(&sock).saturating_sub(e0);
        *r2.lock().unwrap() = format!(
            "idle CPU over {wall:.0} s: {:.3} % of one CPU ({cpu:.2} s CPU) while receiving {events} proc events from the rest of the machine ({:.1}/s); load average now: {}",
            100.0 * cpu / wall,
            events as f64 / wall,
            std::fs::read_to_string("/proc/loadavg").unwrap().trim()
        );
    });
    println!("{}", report.lock().unwrap());
}

fn rss() {
    let s = Scoped::new("rss");
    let cg = s.cg.clone();
    let opts = s.opts();
    let sock = s.dir.join("control.sock");
    let before = rss_kib();
    let report = Arc::new(std::sync::Mutex::new(String::new()));
    let r2 = report.clone();
    run_daemon_for(opts, move || {
        std::thread::sleep(Duration::from_millis(500));
        let idle_rss = rss_kib();
        let mut child = Command::new(testload())
            .args(["threads", "10000", "w-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        writeln!(stdin, "go").unwrap();
        loop {
            let mut l = String::new();
            if out.read_line(&mut l).unwrap() == 0 || l.trim() == "ready" {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let threads_rss = rss_kib();
        let st = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(canopy_controller::server::call(
                &sock,
                &canopy_controller::protocol::Request::Status {},
                Duration::from_secs(5),
            ));
        let tracked = st
            .ok()
            .and_then(|r| r.result)
            .map(|v| v["tasks_tracked"].clone())
            .unwrap_or_default();
        *r2.lock().unwrap() = format!(
            "RSS: {before} KiB before the daemon, {idle_rss} KiB idle, {threads_rss} KiB while tracking {tracked} tasks (+{} KiB)",
            threads_rss.saturating_sub(idle_rss)
        );
        drop(stdin);
        let _ = child.wait();
    });
    println!("{}", report.lock().unwrap());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("events") => events(),
        Some("idle") => idle(args.get(2).and_then(|v| v.parse().ok()).unwrap_or(60)),
        Some("rss") => rss(),
        Some("latency") => latency::latency(),
        Some("all") | None => {
            events();
            rss();
            latency::latency();
            idle(args.get(2).and_then(|v| v.parse().ok()).unwrap_or(60));
        }
        Some(other) => {
            eprintln!("unknown benchmark {other:?}: events | idle [SECONDS] | rss | latency | all");
            std::process::exit(2);
        }
    }
}
