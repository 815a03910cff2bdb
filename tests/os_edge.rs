//! canopy-sys is the only place that touches cgroupfs, /proc, xattrs, bpffs paths and the
//! kernel probe: this test greps every production Rust file outside `crates/canopy-sys` for the
//! paths and calls that would mean a second copy of an OS edge, and fails naming file:line.
//!
//! Exempt, each for a reason:
//! - `crates/canopy-sys`: it is the edge;
//! - `crates/canopy-guest`, `crates/canopy-vmtest`: the VM guest tooling and harness set up
//!   and observe the guest's kernel from outside canopy (they test canopy, they are not it);
//! - `crates/canopy-controller/src/bin/canopy-daemon-bench/`: a benchmark harness that
//!   measures the daemon from outside (its own /proc CPU time, the load average, a cgroup it
//!   sets up for the workload); it is not shipped;
//! - tests (`tests/` directories, `*_tests.rs` files, and everything from a file's first
//!   `#[cfg(test)]` on, where the unit tests live): fixtures name real paths on purpose;
//! - comments and doc comments: they may say where things live.

use std::path::{Path, PathBuf};

/// What only canopy-sys may contain, and what each means.
const FORBIDDEN: &[(&str, &str)] = &[
    ("\"/sys/fs/cgroup", "a cgroupfs path"),
    ("cgroup.procs\"", "a cgroupfs membership file"),
    ("cgroup.threads\"", "a cgroupfs membership file"),
    ("cgroup.controllers\"", "a cgroupfs file"),
    ("cpu.stat\"", "a cgroupfs file"),
    ("getxattr", "an xattr read"),
    ("setxattr", "an xattr write"),
    ("/proc/self/mounts", "a mount table parse"),
    ("/proc/self/mountinfo", "a mount table parse"),
    ("\"/proc", "a /proc read"),
    (
        "/sys/kernel/sched_ext",
        "the sched_ext sysfs (probe or state)",
    ),
    ("/sys/kernel/btf", "a kernel BTF probe"),
    ("\"/sys/fs/bpf", "a bpffs path"),
];

/// Directories (relative to the repository) whose files are exempt, with the reason above.
const EXEMPT_DIRS: &[&str] = &[
    "crates/canopy-sys",
    "crates/canopy-guest",
    "crates/canopy-vmtest",
    "crates/canopy-controller/src/bin/canopy-daemon-bench",
    "tests",
    "crates/canopy-controller/tests",
    "crates/canopy-policy/tests",
    "fuzz",
    "target",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The production part of a file: up to its first `#[cfg(test)]`, without comment lines.
fn production_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(index, line)| (index + 1, line))
}

#[test]
fn only_canopy_sys_touches_the_os_edges() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for top in ["src", "crates"] {
        rust_files(&root.join(top), &mut files);
    }
    files.push(root.join("build.rs"));
    let mut found = Vec::new();
    let mut scanned = 0;
    for file in &files {
        let relative = file.strip_prefix(root).expect("under the repository");
        if EXEMPT_DIRS.iter().any(|dir| relative.starts_with(dir))
            || relative.to_string_lossy().ends_with("_tests.rs")
        {
            continue;
        }
        scanned += 1;
        let text = std::fs::read_to_string(file).expect("readable source");
        for (line_number, line) in production_lines(&text) {
            for (pattern, meaning) in FORBIDDEN {
                if line.contains(pattern) {
                    found.push(format!(
                        "{}:{line_number}: {meaning} ({pattern}) outside canopy-sys: {}",
                        relative.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        scanned > 50,
        "only {scanned} files scanned: is the tree walk right?"
    );
    assert!(
        found.is_empty(),
        "move these into crates/canopy-sys and call it:\n{}",
        found.join("\n")
    );
}

/// The scan itself catches what it should (so an empty result means something).
#[test]
fn the_scan_sees_a_forbidden_line_and_skips_tests_and_comments() {
    let text = "let a = 1;\n// \"/proc/self/mounts\"\nlet m = read(\"/proc/self/mounts\");\n#[cfg(test)]\nlet t = \"/sys/fs/cgroup\";\n";
    let hits: Vec<usize> = production_lines(text)
        .filter(|(_, line)| FORBIDDEN.iter().any(|(pattern, _)| line.contains(pattern)))
        .map(|(number, _)| number)
        .collect();
    assert_eq!(hits, vec![3]);
}
