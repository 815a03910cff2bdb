//! Checks of the fleet files in `deploy/` with their own tools (installed by
//! `scripts/install-deps.sh`; a missing tool fails the test rather than skipping it):
//! `promtool check rules` and `promtool test rules` on `deploy/prometheus/`, the Grafana
//! dashboard against the metric and rule names canopy has, the Kubernetes DaemonSet against the
//! API schema (`kubernetes-validate`, strict) and against the systemd unit's privileges,
//! `ansible-lint --profile production` on `deploy/ansible/`. The
//! live checks (a real Prometheus
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

#[test]
fn ansible_lint_passes_the_production_profile() {
    let out = run(Command::new("ansible-lint")
        .args(["--profile", "production", "--nocolor"])
        .current_dir(repo_file("deploy/ansible")));
    assert!(out.status.success());
    let syntax = run(Command::new("ansible-playbook")
        .args([
            "--syntax-check",
            "-i",
            "inventory.example.ini",
            "rollout.yml",
            "rollback.yml",
        ])
        .current_dir(repo_file("deploy/ansible")));
    assert!(syntax.status.success());
}

/// The venv `scripts/install-deps.sh` puts the Python tools in.
const PYTHON_TOOLS: &str = "/opt/canopy-test-tools/bin";

#[test]
fn the_daemonset_validates_against_the_kubernetes_api_schema() {
    let out = run(Command::new(format!("{PYTHON_TOOLS}/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(repo_file("deploy/kubernetes/canopy-daemonset.yaml")));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("passed for resource daemonset/canopy"));
}

/// The DaemonSet grants exactly the capabilities `canopy.service` bounds the daemon to, runs
/// unprivileged with every other capability dropped, mounts what the daemon reads and writes,
/// takes its policy from the ConfigMap the rollout doc makes, and probes with `canopy status`.
#[test]
fn the_daemonset_grants_what_the_systemd_unit_grants_and_no_more() {
    let yaml = repo_file("deploy/kubernetes/canopy-daemonset.yaml");
    let out = run(Command::new(format!("{PYTHON_TOOLS}/python"))
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&yaml));
    assert!(out.status.success());
    let ds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        pod["hostNetwork"], true,
        "the proc connector lives in the initial netns"
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut granted: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    granted.sort();
    let unit = std::fs::read_to_string(repo_file("deploy/systemd/canopy.service")).unwrap();
    let mut bounded: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    bounded.sort();
    assert_eq!(
        granted, bounded,
        "DaemonSet capabilities differ from canopy.service's"
    );

    let mounts: Vec<(&str, bool)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
        .collect();
    for (path, read_only) in [
        ("/sys/fs/cgroup", false),
        ("/sys/fs/bpf", false),
        ("/sys/kernel", true),
        ("/etc/canopy", true),
        ("/run/canopy", false),
    ] {
        assert!(
            mounts.contains(&(path, read_only)),
            "{path} (read-only {read_only}) not mounted: {mounts:?}"
        );
    }
    let policy = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "policy")
        .expect("a policy volume");
    assert_eq!(policy["configMap"]["name"], "canopy-policy");
    let doc = std::fs::read_to_string(repo_file("deploy/kubernetes/README.md")).unwrap();
    assert!(doc.contains("create configmap canopy-policy \\\n         --from-file=policy.toml=policies/kubernetes.toml"));
    for probe in ["livenessProbe", "readinessProbe"] {
        let command: Vec<&str> = container[probe]["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|word| word.as_str().unwrap())
            .collect();
        let command = command.join(" ");
        assert!(
            command.contains("/usr/bin/canopy status"),
            "{probe}: {command}"
        );
    }
}
