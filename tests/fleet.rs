//! Checks of the fleet files in `deploy/` with their own tools (installed by
//! `scripts/install-deps.sh`; a missing tool fails the test rather than skipping it):
//! `promtool check rules` and `promtool test rules` on `deploy/prometheus/`, the Grafana
//! dashboard against the metric and rule names canopy has. The live checks (a real Prometheus
//! scraping a daemon, `canopy top` in tmux) are in `tests/daemon_cli.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `cmd`, printing what it said, and fails naming the tool when it is not installed.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (scripts/install-deps.sh installs the fleet tools)")
    });
    println!(
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn promtool_checks_and_unit_tests_the_prometheus_rules() {
    let dir = repo_file("deploy/prometheus");
    let check = run(Command::new("promtool")
        .args(["check", "rules", "canopy-rules.yml"])
        .current_dir(&dir));
    assert!(check.status.success());
    let config = run(Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    assert!(config.status.success());
    let tests = run(Command::new("promtool")
        .args(["test", "rules", "canopy-rules.test.yml"])
        .current_dir(&dir));
    assert!(tests.status.success());
}

/// Every `canopy_*` / `canopy:*` name the dashboard queries is one the daemon renders (in
/// `crates/canopy-controller/src/stats.rs`) or a recording rule defines.
#[test]
fn the_dashboard_queries_only_names_that_exist() {
    let dashboard =
        std::fs::read_to_string(repo_file("deploy/prometheus/canopy-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let rendered =
        std::fs::read_to_string(repo_file("crates/canopy-controller/src/stats.rs")).unwrap();
    let rules = std::fs::read_to_string(repo_file("deploy/prometheus/canopy-rules.yml")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                let known = if name.contains(':') {
                    rules.contains(&format!("record: {name}\n"))
                } else {
                    // A family named literally, or a field of the `counters!` list
                    // (rendered as `canopy_<field>_total`).
                    let field = name
                        .strip_prefix("canopy_")
                        .and_then(|n| n.strip_suffix("_total"))
                        .map(|field| format!("\n    {field},\n"));
                    rendered.contains(&format!("\"{name}\""))
                        || field.is_some_and(|field| rendered.contains(&field))
                };
                assert!(
                    known,
                    "panel {}: {name} is neither rendered nor recorded",
                    panel["title"]
                );
            }
        }
    }
}

/// The `canopy_`/`canopy:` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("canopy") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if tail[..end].starts_with("canopy_") || tail[..end].starts_with("canopy:") {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}
