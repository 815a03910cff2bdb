//! canopy-testload: the workloads the controller's host tests and benchmark drive: a burst of
//! renamed threads, a fork storm, a rename storm, an idle process, a setuid-like process whose thread drops to the user, and
//! control-socket clients (one request, or every stdin line on one connection). Each
//! waits for a line on stdin before starting, prints the ids it created, then `ready`, and
//! lives until stdin closes. Test tooling, not part of the product.

use std::io::{BufRead, Write};
use std::time::Instant;

fn wait_line() {
    let mut l = String::new();
    let _ = std::io::stdin().lock().read_line(&mut l);
}

fn gettid() -> i32 {
    // SAFETY: trivial syscall.
    unsafe { libc::gettid() }
}

fn set_name(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME with a NUL-terminated string of ≤ 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = std::io::stdout();
    match args.get(1).map(String::as_str) {
        Some("threads") => {
            let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
            let prefix = args.get(3).cloned().unwrap_or_else(|| "w-".into());
            wait_line();
            let start = Instant::now();
            let (tx, rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
            let mut handles = Vec::new();
            for i in 0..n {
                let tx = tx.clone();
                let prefix = prefix.clone();
                let stop = stop_rx.clone();
                handles.push(
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || {
                            set_name(&format!("{prefix}{i}"));
                            tx.send(gettid()).unwrap();
                            let _ = stop.lock().map(|r| r.recv());
                        })
                        .expect("spawn"),
                );
            }
            let tids: Vec<i32> = (0..n).map(|_| rx.recv().unwrap()).collect();
            let elapsed = start.elapsed();
            let mut o = out.lock();
            for t in &tids {
                writeln!(o, "{t}").unwrap();
            }
            writeln!(o, "elapsed_ms {}", elapsed.as_millis()).unwrap();
            writeln!(o, "ready").unwrap();
            o.flush().unwrap();
            drop(o);
            wait_line();
            drop(stop_tx);
            for h in handles {
                let _ = h.join();
            }
        }
        Some("forkstorm") => {
            let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
            wait_line();
            let mut pids = Vec::new();
            for _ in 0..n {
                // SAFETY: single-threaded here; the child only calls async-signal-safe functions.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let name = format!("f-{}\0", pids.len());
                    unsafe {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
                        libc::pause();
                        libc::_exit(0);
                    }
                }
                pids.push(pid);
            }
            let mut o = out.lock();
            for p in &pids {
                writeln!(o, "{p}").unwrap();
            }
            writeln!(o, "ready").unwrap();
            o.flush().unwrap();
            drop(o);
            wait_line();
            for p in pids {
                // SAFETY: our own children.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                    libc::waitpid(p, std::ptr::null_mut(), 0);
                }
            }
        }
        Some("renamestorm") => {
            // renamestorm SECONDS: the main thread renames itself between `storm-a` and
            // `storm-b` as fast as it can for SECONDS (PR_SET_NAME), then prints how many
            // renames it made and `ready`.
            let seconds: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1);
            let names: [&[u8]; 2] = [b"storm-a\0", b"storm-b\0"];
            wait_line();
            let end = Instant::now() + std::time::Duration::from_secs(seconds);
            let mut renames = 0usize;
            while Instant::now() < end {
                for _ in 0..1000 {
                    // SAFETY: PR_SET_NAME with a NUL-terminated string of ≤ 16 bytes.
                    unsafe { libc::prctl(libc::PR_SET_NAME, names[renames & 1].as_ptr(), 0, 0, 0) };
                    renames += 1;
                }
            }
            let mut o = out.lock();
            writeln!(o, "{renames}").unwrap();
            writeln!(o, "ready").unwrap();
            drop(o);
            wait_line();
        }
        Some("idle") => {
            if let Some(name) = args.get(2) {
                set_name(name);
            }
            writeln!(out.lock(), "{}", std::process::id()).unwrap();
            wait_line();
        }
        Some("setuid-program") => {
            // setuid-program UID (run as root): the process runs as a setuid-root program run by
            // UID does (real uid UID, effective and saved uid root) and starts a thread named
            // `w-switch`; it prints that thread's tid and `ready`. On a stdin line the thread
            // alone drops to UID entirely (the raw syscall changes only the calling thread;
            // glibc's setresuid would change every thread) and `switched` is printed.
            let user: libc::uid_t = args[2].parse().expect("a uid");
            let setresuid = |r: libc::uid_t, e: libc::uid_t, s: libc::uid_t| {
                // SAFETY: setresuid on the calling thread; the arguments are plain uids.
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, r, e, s) };
                assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            };
            setresuid(user, 0, 0);
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                set_name("w-switch");
                tid_tx.send(gettid()).unwrap();
                if go_rx.recv().is_ok() {
                    setresuid(user, user, user);
                    let _ = done_tx.send(());
                    let _ = go_rx.recv();
                }
            });
            let tid = tid_rx.recv().unwrap();
            writeln!(out.lock(), "{tid}\nready").unwrap();
            wait_line();
            go_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            writeln!(out.lock(), "switched").unwrap();
            wait_line();
            drop(go_tx);
            let _ = thread.join();
        }
        Some("client") => {
            // client SOCKET JSON-LINE: prints the reply line.
            let mut s = std::os::unix::net::UnixStream::connect(&args[2]).expect("connect");
            s.write_all(args[3].as_bytes()).unwrap();
            s.write_all(b"\n").unwrap();
            let mut reply = String::new();
            let _ = std::io::BufReader::new(s).read_line(&mut reply);
            print!("{reply}");
        }
        Some("client-lines") => {
            // client-lines SOCKET: sends every stdin line as a request on one connection, one at
            // a time, and prints "ok N errors M" and the first error reply.
            let s = std::os::unix::net::UnixStream::connect(&args[2]).expect("connect");
            let mut replies = std::io::BufReader::new(s.try_clone().expect("clone"));
            let mut s = s;
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, String::new());
            for line in std::io::stdin().lines() {
                let line = line.expect("stdin");
                s.write_all(line.as_bytes()).unwrap();
                s.write_all(b"\n").unwrap();
                let mut reply = String::new();
                if replies.read_line(&mut reply).unwrap_or(0) == 0 {
                    break;
                }
                if reply.contains("\"ok\":true") {
                    ok += 1;
                } else {
                    errors += 1;
                    if first_error.is_empty() {
                        first_error = reply.trim().to_string();
                    }
                }
            }
            println!("ok {ok} errors {errors}");
            println!("{first_error}");
        }
        _ => {
            eprintln!("usage: canopy-testload threads N [PREFIX] | forkstorm N | idle [NAME] | client SOCKET JSON | client-lines SOCKET");
            std::process::exit(2);
        }
    }
}
