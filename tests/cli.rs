//! End-to-end tests of the `canopy` binary's policy commands: exit codes, diagnostics on stderr,
//! JSON output, the shipped policies, schedqos import checked through `canopy check`, and bad
//! input (malformed, wrong types, invalid UTF-8, huge, deeply nested, missing, unreadable, too
//! many drop-ins) that must give a clear error and exit 1, never a panic or a hang.

use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::time::Duration;
use std::time::Instant;

fn canopy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(args)
        .output()
        .expect("run canopy")
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts exit 1 with a clear, non-panicking message containing `needle`.
fn assert_clear_failure(output: &Output, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {text}");
    assert!(
        text.contains(needle),
        "expected {needle:?} in stderr: {text}"
    );
    assert!(!text.contains("panicked"), "panic: {text}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn shipped_policies_check_clean() {
    // Every file in policies/, so a new shipped policy is checked without being listed here.
    let mut names: Vec<String> = fs::read_dir(repo("policies"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();
    for expected in [
        "build-farm.toml",
        "default.toml",
        "desktop.toml",
        "kubernetes.toml",
        "multi-tenant.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "policies/{expected} is missing: {names:?}"
        );
    }
    for name in names {
        let path = repo(&format!("policies/{name}"));
        let output = canopy(&["check", &path]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{name}: {text}");
        assert!(text.contains("0 warning(s)"), "{name} has warnings: {text}");
    }
}

#[test]
fn check_prints_located_diagnostics_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "policy.toml", "[[rules]]\ncomm = \"make\"\nclass = \"BACKGRUND\"\n\n[groups.a]\npath = \"a/*\"\nweight = 0\n");
    let output = canopy(&["check", path.to_str().unwrap()]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1));
    let file = path.display();
    assert!(
        text.contains(&format!(
            "{file}:3:9: error: unknown class `BACKGRUND`\n  hint: did you mean `BACKGROUND`?"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{file}:7:10: error: weight = 0 is out of range 1..=10000"
        )),
        "{text}"
    );
    assert!(text.contains("2 error(s)"), "{text}");
}

#[test]
fn check_json_format_for_ci() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.toml",
        "[[rules]]\ncomm = \"x\"\nclass = \"NOPE\"\n",
    );
    let output = canopy(&["check", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["valid"], false);
    let diagnostic = &report["diagnostics"][0];
    assert_eq!(diagnostic["code"], "unknown-class");
    assert_eq!(diagnostic["line"], 3);
    assert_eq!(diagnostic["column"], 9);
    assert_eq!(diagnostic["severity"], "error");

    let ok = canopy(&["check", "--format", "json", &repo("policies/default.toml")]);
    assert_eq!(ok.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["plan_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn check_directory_merges_drop_ins_in_lexical_order() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "policy.toml",
        "[[rules]]\nname = \"build\"\ncomm = \"make\"\nclass = \"BACKGROUND\"\n",
    );
    fs::create_dir(dir.path().join("policy.d")).unwrap();
    write(
        &dir.path().join("policy.d"),
        "20-late.toml",
        "[groups.apps]\nweight = 300\n",
    );
    write(&dir.path().join("policy.d"), "10-early.toml", "[groups.apps]\npath = \"apps/*\"\nweight = 50\n\n[[rules]]\nname = \"build\"\ncomm = \"make\"\nclass = \"UTILITY\"\n");
    let output = canopy(&[
        "compile",
        "--explain",
        dir.path().to_str().unwrap(),
        "--cgroup-root",
        "/nonexistent",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(text.contains("comm=\"make\" -> UTILITY"), "{text}");
    assert!(text.contains("base: weight 300"), "{text}");
}

#[test]
fn import_schedqos_seed_configs_end_to_end_through_check() {
    // The configurations quoted in the Sched QoS v0.1 announcement (cyclictest/hackbench;
    // schbench, make, gcc, cc1) and its default qos_mappings.json.
    let output = canopy(&["import", "schedqos", &repo("tests/golden/schedqos-seed")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let toml = stdout(&output);
    for needle in [
        "exe = \"cyclictest\"\nclass = \"USER_INTERACTIVE\"",
        "exe = \"hackbench\"\nclass = \"BACKGROUND\"",
        "exe = \"make\"\nclass = \"BACKGROUND\"",
        "exe = \"gcc\"\nclass = \"BACKGROUND\"",
        "exe = \"cc1\"\nclass = \"BACKGROUND\"",
        "name = \"schbench-msg\"\nclass = \"USER_INTERACTIVE\"",
        "name = \"schbench-worker\"\nclass = \"USER_INITIATED\"",
    ] {
        assert!(toml.contains(needle), "missing {needle:?} in:\n{toml}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "imported.toml", &toml);
    let check = canopy(&["check", path.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    // schedqos maps programs by name, so its promotions are ones any process can claim: the
    // only warnings are those (cyclictest, and schbench's two thread rules), nothing else.
    let text = stderr(&check);
    assert!(text.contains("3 warning(s)"), "{text}");
    assert_eq!(
        text.matches("above DEFAULT, on facts any process controls")
            .count(),
        3,
        "{text}"
    );
}

#[test]
fn import_schedqos_unknown_class_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("app_configs")).unwrap();
    write(
        &dir.path().join("app_configs"),
        "a.json",
        r#"{"make": {"qos": "QOS_BACKGROUD"}}"#,
    );
    let output = canopy(&["import", "schedqos", dir.path().to_str().unwrap()]);
    assert_clear_failure(&output, "unknown QoS class `QOS_BACKGROUD`");
    assert!(output.stdout.is_empty());
    let missing = canopy(&["import", "schedqos", "/nonexistent/schedqos"]);
    assert_clear_failure(&missing, "is not a schedqos configuration directory");
}

#[test]
fn diff_reports_semantic_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.toml", "[[rules]]\nname = \"build\"\ncomm = \"make\"\nclass = \"BACKGROUND\"\n\n[groups.apps]\npath = \"apps/*\"\nweight = 100\n");
    let same = write(dir.path(), "same.toml", "# reformatted\n[groups.apps]\nweight = 100\npath = \"apps/*\"\n\n[[rules]]\nclass = \"BACKGROUND\"\ncomm = \"make\"\nname = \"build\"\n");
    let new = write(dir.path(), "new.toml", "[classes.USER_INTERACTIVE]\nnice = -5\n\n[[rules]]\nname = \"build\"\ncomm = \"make\"\nclass = \"UTILITY\"\n\n[[rules]]\ncomm = \"rustc\"\nclass = \"BACKGROUND\"\n\n[groups.apps]\npath = \"apps/*\"\nweight = 300\n");
    let output = canopy(&["diff", old.to_str().unwrap(), same.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).contains("no semantic difference"),
        "{}",
        stdout(&output)
    );
    let output = canopy(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        text.contains("~ class USER_INTERACTIVE\n    params.nice: -4 -> -5"),
        "{text}"
    );
    assert!(
        text.contains("~ rule `build`\n    class: \"BACKGROUND\" -> \"UTILITY\""),
        "{text}"
    );
    assert!(text.contains("+ rule comm=\"rustc\" (#2)"), "{text}");
    assert!(text.contains("~ group apps"), "{text}");
    assert!(text.contains("weight: 100 -> 300"), "{text}");
}

#[test]
fn compile_explain_lists_cgroups_each_group_owns() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "cgroup.controllers", "cpu\n");
    for dir in [
        "tenants/acme",
        "tenants/globex",
        "tenants/acme/batch",
        "system.slice/ssh.service",
        "other",
    ] {
        fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let output = canopy(&[
        "compile",
        "--explain",
        &repo("policies/multi-tenant.toml"),
        "--cgroup-root",
        root.path().to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(text.contains("classes (highest first):"), "{text}");
    assert!(text.contains("rules in evaluation order"), "{text}");
    assert!(
        text.contains(
            "      cgroups on this machine: 2\n        tenants/acme\n        tenants/globex\n"
        ),
        "{text}"
    );
    assert!(text.contains("        tenants/acme/batch\n"), "{text}");
    assert!(
        text.contains("        system.slice/ssh.service\n"),
        "{text}"
    );
}

#[test]
fn compile_prints_canonical_toml_that_recompiles_to_the_same_plan() {
    let output = canopy(&["compile", &repo("policies/desktop.toml")]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    let hash = text
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("# canopy plan ")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "canonical.toml", &text);
    let check = canopy(&["check", "--format", "json", path.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["plan_hash"], hash.as_str());
}

#[test]
fn run_refuses_a_policy_that_does_not_load() {
    // The daemon never starts on a policy it cannot read or compile; the error names the path.
    let output = canopy(&["run", "--policy", "/nonexistent/canopy/policy.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/canopy/policy.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn help_completions_and_man_page() {
    for args in [
        &["--help"][..],
        &["check", "--help"],
        &["compile", "--help"],
        &["diff", "--help"],
        &["import", "schedqos", "--help"],
        &["run", "--help"],
        &["ctl", "--help"],
        &["status", "--help"],
        &["bench", "policy", "--help"],
    ] {
        let output = canopy(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(stdout(&output).contains("Usage:"), "{args:?}");
    }
    let bash = canopy(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    assert!(stdout(&bash).contains("_canopy()"));
    let man = canopy(&["man"]);
    assert_eq!(man.status.code(), Some(0));
    assert!(stdout(&man).contains(".TH canopy"));
}

// ----- bad input ----------------------------------------------------------------------------

#[test]
fn bad_input_malformed_toml() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.toml", "[[rules]\ncomm = \"x\"\n");
    assert_clear_failure(
        &canopy(&["check", path.to_str().unwrap()]),
        "p.toml:1:9: error: invalid TOML: unclosed array table",
    );
}

#[test]
fn bad_input_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.toml", "rules = 3\n[groups]\napps = \"x\"\n");
    let output = canopy(&["check", path.to_str().unwrap()]);
    assert_clear_failure(
        &output,
        "p.toml:1:9: error: expected an array of tables, found integer in `rules`",
    );
    assert_clear_failure(
        &output,
        "p.toml:3:8: error: expected a table, found string in group `apps`",
    );
}

#[test]
fn bad_input_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    fs::write(&path, b"[[rules]]\ncomm = \"\xc3\x28\"\n").unwrap();
    assert_clear_failure(
        &canopy(&["check", path.to_str().unwrap()]),
        "p.toml:2:9: error: invalid UTF-8",
    );
}

#[test]
fn bad_input_100_mb_file_is_refused_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    let file = fs::File::create(&path).unwrap();
    file.set_len(100 * 1024 * 1024).unwrap();
    let start = Instant::now();
    let output = canopy(&["check", path.to_str().unwrap()]);
    assert_clear_failure(&output, "policy files larger than 16 MiB are refused");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn bad_input_deeply_nested_tables() {
    let dir = tempfile::tempdir().unwrap();
    let arrays = format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let tables = format!("x = {}{}\n", "{a=".repeat(50_000), "}".repeat(50_000));
    let dotted = format!("[{}]\n", vec!["a"; 50_000].join("."));
    for (name, text) in [
        ("arrays.toml", arrays),
        ("tables.toml", tables),
        ("dotted.toml", dotted),
    ] {
        let path = write(dir.path(), name, &text);
        assert_clear_failure(
            &canopy(&["check", path.to_str().unwrap()]),
            "error: invalid TOML",
        );
    }
}

#[test]
fn bad_input_missing_path() {
    assert_clear_failure(
        &canopy(&["check", "/nonexistent/canopy/policy.toml"]),
        "cannot access policy path /nonexistent/canopy/policy.toml",
    );
    let empty = tempfile::tempdir().unwrap();
    assert_clear_failure(
        &canopy(&["check", empty.path().to_str().unwrap()]),
        "has neither policy.toml nor policy.d/*.toml",
    );
}

#[test]
fn bad_input_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let drop_ins = dir.path().join("policy.d");
    fs::create_dir(&drop_ins).unwrap();
    // A dangling symlink and a directory named like a drop-in: neither can be read as a policy
    // (tests run as root, so permission bits would not stop a read).
    std::os::unix::fs::symlink(
        "/nonexistent/target.toml",
        drop_ins.join("10-dangling.toml"),
    )
    .unwrap();
    let output = canopy(&["check", dir.path().to_str().unwrap()]);
    assert_clear_failure(&output, "10-dangling.toml");
    fs::remove_file(drop_ins.join("10-dangling.toml")).unwrap();
    fs::create_dir(drop_ins.join("20-dir.toml")).unwrap();
    assert_clear_failure(
        &canopy(&["check", dir.path().to_str().unwrap()]),
        "20-dir.toml is not a regular file",
    );
}

#[test]
fn bad_input_thousands_of_drop_ins() {
    let dir = tempfile::tempdir().unwrap();
    let drop_ins = dir.path().join("policy.d");
    fs::create_dir(&drop_ins).unwrap();
    for index in 0..3000 {
        write(
            &drop_ins,
            &format!("{index:05}.toml"),
            &format!("[[rules]]\ncomm = \"p{index}\"\nclass = \"BACKGROUND\"\n"),
        );
    }
    let start = Instant::now();
    let output = canopy(&["check", dir.path().to_str().unwrap()]);
    assert_clear_failure(&output, "has more than 1024 drop-in files");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_thousand_drop_ins_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let drop_ins = dir.path().join("policy.d");
    fs::create_dir(&drop_ins).unwrap();
    for index in 0..1000 {
        write(
            &drop_ins,
            &format!("{index:05}.toml"),
            &format!("[[rules]]\ncomm = \"p{index}\"\nclass = \"BACKGROUND\"\n"),
        );
    }
    let output = canopy(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn check_warns_on_a_promotion_any_process_can_claim_by_name() {
    // issue 11, attack 3: prctl(PR_SET_NAME, "pipewire") must not buy USER_INTERACTIVE
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "policy.toml",
        "[[rules]]\nname = \"audio\"\ncomm = \"pipewire\"\nclass = \"USER_INTERACTIVE\"\n\n[[rules]]\nname = \"pinned\"\nexe = \"/usr/bin/wireplumber\"\nclass = \"USER_INTERACTIVE\"\n",
    );
    let output = canopy(&["check", path.to_str().unwrap()]);
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning is not an error: {text}"
    );
    let file = path.display();
    assert!(
        text.contains(&format!(
            "{file}:4:9: warning: rule `audio` gives `USER_INTERACTIVE`, above DEFAULT, on facts any process controls (comm)"
        )),
        "{text}"
    );
    assert!(
        text.contains("hint: add `uid = ...` or `user = \"...\"`, or match the full `exe` path"),
        "{text}"
    );
    assert!(
        text.contains("1 warning(s)"),
        "only the unpinned rule warns: {text}"
    );
}
