// SPDX-License-Identifier: GPL-2.0-only
//! `/sys/kernel/sched_ext` as JSON: the whole tree (directories as objects, files as their
//! trimmed text) plus the fields scenarios assert on most: `state`, the root's `ops` and every
//! sub-scheduler (`.../sub/sub-<cgroup inode>/ops`).

use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Map, Value};

use crate::result::emit;

const SCHED_EXT_DIR: &str = "/sys/kernel/sched_ext";

#[derive(Args, Debug)]
pub struct SchedExtStateArgs {
    /// Result kind (to tell several snapshots in one run apart).
    #[arg(long, default_value = "sched-ext-state")]
    kind: String,
}

pub fn run(args: &SchedExtStateArgs) -> Result<()> {
    let root = Path::new(SCHED_EXT_DIR);
    if !root.is_dir() {
        return emit(&args.kind, json!({ "present": false, "state": "absent" }));
    }
    let tree = read_tree(root, 0);
    let state = tree
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let root_ops = tree.pointer("/root/ops").cloned().unwrap_or(Value::Null);
    let mut subs = Vec::new();
    if let Some(root_dir) = tree.get("root") {
        collect_subs(root_dir, "root", &mut subs);
    }
    emit(
        &args.kind,
        json!({
            "present": true,
            "state": state,
            "root_ops": root_ops,
            "sub_schedulers": subs,
            "tree": tree,
        }),
    )
}

fn read_tree(dir: &Path, depth: usize) -> Value {
    let mut object = Map::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Value::Object(object);
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() && depth < 8 {
            object.insert(name, read_tree(&path, depth + 1));
        } else if kind.is_file() {
            let value = std::fs::read_to_string(&path)
                .map(|text| Value::String(text.trim_end().to_string()))
                .unwrap_or(Value::Null);
            object.insert(name, value);
        }
        // Symlinks (kobject links) are not followed.
    }
    Value::Object(object)
}

fn collect_subs(dir: &Value, path: &str, out: &mut Vec<Value>) {
    let Some(subs) = dir.get("sub").and_then(Value::as_object) else {
        return;
    };
    for (name, sub) in subs {
        let sub_path = format!("{path}/sub/{name}");
        out.push(json!({
            "path": sub_path,
            "cgroup_inode": name.strip_prefix("sub-").and_then(|ino| ino.parse::<u64>().ok()),
            "ops": sub.get("ops").cloned().unwrap_or(Value::Null),
        }));
        collect_subs(sub, &sub_path, out);
    }
}
