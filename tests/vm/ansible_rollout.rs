// SPDX-License-Identifier: GPL-2.0-only
//! Step of the systemd-guest scenario (`systemd_guest.rs`, one boot for every Debian step):
//! `deploy/ansible/` against the guest (Debian 13, systemd as PID 1, canopy not installed) over
//! SSH on a loopback-forwarded port, from the host's `ansible-playbook`. Both ways the role
//! installs the package are used:
//! 1. `rollout.yml` installing by package name from an apt repository (a flat `file:` repository
//!    in the guest with revision 1) with policy A: the health check passes, the daemon reports
//!    A's hash in scx mode;
//! 2. `rollout.yml` with a given .deb path (revision 2, copied from the host: an upgrade) and
//!    policy B: revision 2 installed, the daemon reports B's hash;
//! 3. `rollout.yml` with a broken policy: refused by `canopy check` before anything changes, the
//!    play fails, and the daemon still runs B (the file on disk is still B);
//! 4. `rollout.yml` with B and the same .deb again: the recap reports no change;
//! 5. `rollback.yml`: the daemon runs A again.
//!
//! Runs 1-4 use Mitogen's strategy (`mitogen_linear`, Debian's `ansible-mitogen`, which
//! scripts/install-deps.sh installs) when it is installed: each task of the default strategy
//! starts a Python in the guest and compiles the module and Ansible's module_utils there, about
//! 1.5 s of TCG time a task, where Mitogen keeps one interpreter for the play (a play of 8
//! small tasks: 16.8 s by the default strategy, 5.7 s by Mitogen's, one boot, 2026-12-05; the
//! step took 204-211 s of the suite's 35 min). The role is the same under both. Run 5 uses the
//! default strategy always, so the plain SSH path (pipelining, `become` through sudo) stays
//! tested. `CANOPY_ANSIBLE_STRATEGY` overrides the strategy of runs 1-4.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canopy_vmtest::RunningGuest;

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

/// The strategy of runs 1-4: `CANOPY_ANSIBLE_STRATEGY`, else Mitogen's when Debian's
/// `ansible-mitogen` is installed (its plugins sit in Ansible's own strategy directory), else
/// Ansible's default.
fn fast_strategy() -> String {
    if let Some(strategy) = std::env::var_os("CANOPY_ANSIBLE_STRATEGY") {
        return strategy.to_string_lossy().into_owned();
    }
    let mitogen = Path::new("/usr/lib/python3/dist-packages/ansible_mitogen");
    if mitogen.is_dir() {
        "mitogen_linear".to_string()
    } else {
        "linear".to_string()
    }
}

/// Runs a playbook of `deploy/ansible/` against the guest with `-e` variables under an Ansible
/// strategy (`linear` is Ansible's default); prints and returns its output.
fn playbook(
    guest: &RunningGuest,
    dir: &Path,
    playbook: &str,
    strategy: &str,
    vars: &[(&str, &Path)],
) -> Output {
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
    let out =
        Command::new("ansible-playbook")
            .current_dir(repo_file("deploy/ansible"))
            .arg("-i")
            .arg(&inventory)
            .arg(playbook)
            .args(["-e", "canopy_expected_mode=scx"])
            // The health check's 60 s default is ample for hardware; the emulated guest on a
            // loaded host takes minutes to load the root (debian_package.rs's drop-in).
            .args(["-e", "canopy_health_retries=300"])
            .args(vars.iter().flat_map(|(name, value)| {
                ["-e".to_string(), format!("{name}={}", value.display())]
            }))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            // One SSH connection for the whole play (ansible's default ssh_args, which this
            // replaces, have it too): a new connection to the TCG guest costs seconds.
            .env(
                "ANSIBLE_SSH_ARGS",
                "-o ControlMaster=auto -o ControlPersist=300s -o UserKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=no -o LogLevel=ERROR",
            )
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_STRATEGY", strategy)
            // Each task's time and the slowest 20 after the recap (under the default strategy
            // each module is a Python start in the guest: the step took 390 s of TCG time in
            // session 7, 204-211 s before Mitogen, 97-108 s with it).
            .env("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
            .output()
            .expect("ansible-playbook is installed (scripts/install-deps.sh)");
    // The recap of a play that succeeded, the last 40 lines (the failed task and the recap) of
    // one that failed (one refusal is expected): a failure elsewhere in the scenario stays
    // readable in CI's cut of the output.
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        let recap = stdout.rfind("PLAY RECAP").map_or("", |at| &stdout[at..]);
        println!(
            "ansible-playbook {playbook} ({strategy}) with {vars:?}: {}\n{recap}",
            out.status
        );
    } else {
        let lines: Vec<&str> = stdout.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        println!(
            "ansible-playbook {playbook} ({strategy}) with {vars:?}: {} (its last 40 lines)\n{tail}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

/// The version of the installed canopy package in the guest ("" when none).
fn installed_version(guest: &RunningGuest) -> String {
    let out = guest
        .ssh("dpkg-query -W -f='${Version}' canopy 2>/dev/null || true")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The rollout in a guest without canopy that has revision 1 and 2 of the package in /root.
pub fn rolls_out_refuses_a_broken_policy_and_rolls_back(
    guest: &RunningGuest,
    revision_2: &Path,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let policy_a = write("a.toml.j2", POLICY_A);
    let policy_b = write("b.toml.j2", POLICY_B);
    let policy_broken = write("broken.toml.j2", POLICY_BROKEN);
    let (hash_a, hash_b) = (plan_hash(&policy_a), plan_hash(&policy_b));
    assert_eq!(
        installed_version(guest),
        "",
        "canopy is not installed at start"
    );

    // A flat apt repository in the guest with revision 1 (as `dpkg-scanpackages` writes it);
    // the guest has no other apt source.
    let repo = guest.ssh(
        "set -e; mkdir -p /srv/canopy-apt; cd /srv/canopy-apt; cp /root/canopy_*-1_amd64.deb .; \
         for deb in *.deb; do dpkg-deb -f \"$deb\" | sed '/^$/d'; echo \"Filename: ./$deb\"; \
         echo \"Size: $(stat -c %s \"$deb\")\"; echo \"SHA256: $(sha256sum \"$deb\" | cut -d' ' -f1)\"; \
         echo; done > Packages; \
         echo 'deb [trusted=yes] file:/srv/canopy-apt ./' > /etc/apt/sources.list.d/canopy.list",
    )?;
    assert!(repo.status.success(), "{repo:?}");

    // 1. Install by package name from the apt repository (no .deb path), and roll A out.
    let fast = fast_strategy();
    let by_name = playbook(
        guest,
        dir.path(),
        "rollout.yml",
        &fast,
        &[("canopy_policy_template", &policy_a)],
    );
    assert!(
        by_name.status.success(),
        "rollout installing from apt failed"
    );
    let version_1 = installed_version(guest);
    assert!(version_1.ends_with("-1"), "installed from apt: {version_1}");
    assert_eq!(guest_status(guest), (hash_a.clone(), "scx".to_string()));

    // 2. Upgrade from a given .deb and roll B out, in one run.
    let with_deb = [
        ("canopy_policy_template", policy_b.as_path()),
        ("canopy_deb_path", revision_2),
    ];
    let rollout = playbook(guest, dir.path(), "rollout.yml", &fast, &with_deb);
    assert!(
        rollout.status.success(),
        "rollout of B with the .deb failed"
    );
    let version_2 = installed_version(guest);
    assert!(
        version_2.ends_with("-2"),
        "installed from the .deb: {version_2}"
    );
    assert_eq!(guest_status(guest), (hash_b.clone(), "scx".to_string()));

    // 3. A broken policy is refused; B stays in force and on disk.
    let broken = playbook(
        guest,
        dir.path(),
        "rollout.yml",
        &fast,
        &[
            ("canopy_policy_template", &policy_broken),
            ("canopy_deb_path", revision_2),
        ],
    );
    assert!(
        !broken.status.success(),
        "the broken policy was not refused"
    );
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("unknown class `BACKGRUND`"),
        "the refusal does not name the problem"
    );
    assert_eq!(
        guest_status(guest).0,
        hash_b,
        "the broken policy changed the hash in force"
    );
    let on_disk = guest.ssh("cat /etc/canopy/policy.toml")?;
    assert_eq!(String::from_utf8_lossy(&on_disk.stdout), POLICY_B);

    // 4. Nothing to change, the package included.
    let again = playbook(guest, dir.path(), "rollout.yml", &fast, &with_deb);
    assert!(again.status.success());
    assert_eq!(
        changed_count(&again),
        Some(0),
        "a second run changed something"
    );

    // 5. Roll back to A.
    let rollback = playbook(guest, dir.path(), "rollback.yml", "linear", &[]);
    assert!(rollback.status.success(), "rollback failed");
    assert_eq!(guest_status(guest), (hash_a, "scx".to_string()));

    let journal = guest.ssh("journalctl -u canopy.service --no-pager | tail -20")?;
    println!("{}", String::from_utf8_lossy(&journal.stdout));
    Ok(())
}
