// SPDX-License-Identifier: GPL-2.0-only
//! Scenario: `deploy/ansible/` against the systemd guest (Debian 13, systemd as PID 1) over SSH
//! on a loopback-forwarded port, from the host's `ansible-playbook`. canopy is installed in the
//! guest as the package lays it out (binary, unit, sysusers, tmpfiles) and runs policy A; then:
//! 1. `rollout.yml` with policy B: the health check passes and the daemon reports B's hash;
//! 2. `rollout.yml` with a broken policy: refused by `canopy check` before anything changes, the
//!    play fails, and the daemon still runs B (the file on disk is still B);
//! 3. `rollout.yml` with B again: the recap reports no change;
//! 4. `rollback.yml`: the daemon runs A again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use canopy_vmtest::{RunningGuest, SystemdGuest};

const POLICY_A: &str = "[daemon]\nmode = \"auto\"\n\n[[rules]]\nname = \"sleepers\"\ncomm = \"sleep\"\nclass = \"BACKGROUND\"\n";
const POLICY_B: &str = "[daemon]\nmode = \"auto\"\n\n[[rules]]\nname = \"sleepers\"\ncomm = \"sleep\"\nclass = \"UTILITY\"\n\n[[rules]]\nname = \"shells\"\ncomm = \"{bash,sh}\"\nclass = \"USER_INITIATED\"\n";
const POLICY_BROKEN: &str = "[[rules]]\ncomm = \"sleep\"\nclass = \"BACKGRUND\"\n";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The plan hash `canopy check` prints for a policy file.
fn plan_hash(policy: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .arg("check")
        .arg(policy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text.split("plan ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
        .expect("canopy check prints the plan hash")
        .to_string()
}

/// (policy hash, mode) that `canopy status --json` in the guest reports.
fn guest_status(guest: &RunningGuest) -> (String, String) {
    let out = guest.ssh("canopy status --json --interval-ms 0").unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    (
        status["policy_hash"].as_str().unwrap_or("").to_string(),
        status["mode"].as_str().unwrap_or("").to_string(),
    )
}

/// Runs a playbook of `deploy/ansible/` against the guest; prints and returns its output.
fn playbook(guest: &RunningGuest, dir: &Path, playbook: &str, policy: &Path) -> Output {
    let inventory = dir.join("inventory.ini");
    std::fs::write(
        &inventory,
        format!(
            "[canopy]\nguest ansible_host=127.0.0.1 ansible_port={} ansible_user=root \
             ansible_ssh_private_key_file={} ansible_python_interpreter=/usr/bin/python3\n",
            guest.ssh_port(),
            guest.ssh_key().display()
        ),
    )
    .unwrap();
    let out = Command::new("ansible-playbook")
        .current_dir(repo_file("deploy/ansible"))
        .arg("-i")
        .arg(&inventory)
        .arg(playbook)
        .args([
            "-e",
            "canopy_install=false",
            "-e",
            "canopy_expected_mode=scx",
        ])
        .arg("-e")
        .arg(format!("canopy_policy_template={}", policy.display()))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env(
            "ANSIBLE_SSH_ARGS",
            "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR",
        )
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("ansible-playbook is installed (scripts/install-deps.sh)");
    println!(
        "ansible-playbook {playbook} with {}: {}\n{}{}",
        policy.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `changed=N` count of the play recap.
fn changed_count(out: &Output) -> Option<u32> {
    let text = String::from_utf8_lossy(&out.stdout);
    let recap = text.split("PLAY RECAP").last()?;
    let field = recap
        .split_whitespace()
        .find(|w| w.starts_with("changed="))?;
    field.strip_prefix("changed=")?.parse().ok()
}

#[test]
fn ansible_rolls_a_policy_out_refuses_a_broken_one_and_rolls_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let policy_a = write("a.toml", POLICY_A);
    let policy_b = write("b.toml.j2", POLICY_B);
    let policy_broken = write("broken.toml.j2", POLICY_BROKEN);
    let (hash_a, hash_b) = (plan_hash(&policy_a), plan_hash(&policy_b));

    let guest = SystemdGuest::new("ansible-rollout")
        .with_file(env!("CARGO_BIN_EXE_canopy"), "/usr/bin/canopy")
        .with_file(
            repo_file("deploy/systemd/canopy.service"),
            "/etc/systemd/system/canopy.service",
        )
        .with_file(
            repo_file("deploy/systemd/canopy.sysusers.conf"),
            "/usr/lib/sysusers.d/canopy.conf",
        )
        .with_file(
            repo_file("deploy/systemd/canopy.tmpfiles.conf"),
            "/usr/lib/tmpfiles.d/canopy.conf",
        )
        .with_file(&policy_a, "/etc/canopy/policy.toml")
        .timeout(Duration::from_secs(600))
        .boot()?;
    let setup = guest.ssh(
        "set -e; systemd-sysusers; systemd-tmpfiles --create; systemctl daemon-reload; \
         systemctl enable --now canopy.service; systemctl is-active canopy.service",
    )?;
    assert!(setup.status.success(), "{setup:?}");
    let mut status = (String::new(), String::new());
    for _ in 0..60 {
        status = guest_status(&guest);
        if status.0 == hash_a {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        status,
        (hash_a.clone(), "scx".to_string()),
        "policy A in scx mode at start"
    );

    // 1. Roll B out.
    let rollout = playbook(&guest, dir.path(), "rollout.yml", &policy_b);
    assert!(rollout.status.success(), "rollout of B failed");
    assert_eq!(guest_status(&guest), (hash_b.clone(), "scx".to_string()));

    // 2. A broken policy is refused; B stays in force and on disk.
    let broken = playbook(&guest, dir.path(), "rollout.yml", &policy_broken);
    assert!(
        !broken.status.success(),
        "the broken policy was not refused"
    );
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("unknown class `BACKGRUND`"),
        "the refusal does not name the problem"
    );
    assert_eq!(
        guest_status(&guest).0,
        hash_b,
        "the broken policy changed the hash in force"
    );
    let on_disk = guest.ssh("cat /etc/canopy/policy.toml")?;
    assert_eq!(String::from_utf8_lossy(&on_disk.stdout), POLICY_B);

    // 3. Nothing to change.
    let again = playbook(&guest, dir.path(), "rollout.yml", &policy_b);
    assert!(again.status.success());
    assert_eq!(
        changed_count(&again),
        Some(0),
        "a second run changed something"
    );

    // 4. Roll back to A.
    let rollback = playbook(&guest, dir.path(), "rollback.yml", &policy_b);
    assert!(rollback.status.success(), "rollback failed");
    assert_eq!(guest_status(&guest), (hash_a, "scx".to_string()));

    let journal = guest.ssh("journalctl -u canopy.service --no-pager | tail -20")?;
    println!("{}", String::from_utf8_lossy(&journal.stdout));
    guest.shutdown()?;
    Ok(())
}
