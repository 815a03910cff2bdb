// SPDX-License-Identifier: GPL-2.0-only
//! Build script for the `canopy` binary.
//!
//! It owns two generated artefacts, both under OUT_DIR:
//! - one libbpf-rs skeleton per `bpf/*.bpf.c` and `bpf/fixtures/*.bpf.c` (`<name>.skel.rs`), compiled with clang-22
//!   (arena-based cid-form schedulers need it; see TESTBED.md);
//! - `bpf_intf.rs`, the Rust side of `bpf/intf.h`: bindgen output for every type and enum, plus
//!   a small generator for the stats struct (one field and description per `enum canopy_stat`
//!   entry) and the kernel-constant name table (`enum canopy_kconst`). intf.h stays the single
//!   source of truth; nothing in `src/` restates it.
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const BPF_DIR: &str = "bpf";
/// Test fixtures (foreign sub-schedulers); built the same way.
const FIXTURE_DIR: &str = "bpf/fixtures";
const INTF_HEADER: &str = "bpf/intf.h";
const BPF_CLANG: &str = "clang-22";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed={BPF_DIR}");
    println!("cargo:rerun-if-env-changed=CANOPY_BPF_CLANG");
    println!("cargo:rerun-if-env-changed=CANOPY_BPF_EXTRA_CFLAGS");

    build_skeletons(&out_dir);
    generate_intf(&out_dir);
}

/// Compiles every `bpf/*.bpf.c` into `OUT_DIR/<name>.bpf.o` and `OUT_DIR/<name>.skel.rs`.
/// `CANOPY_BPF_EXTRA_CFLAGS` (whitespace-separated) is added to clang's arguments: only to show
/// what a bound does by building without it, e.g.
/// `-DCANOPY_PREEMPT_BUDGET_NS=1000000000000` (tests/vm/scx_bounds.rs), never for a release.
fn build_skeletons(out_dir: &Path) {
    let clang = env::var("CANOPY_BPF_CLANG").unwrap_or_else(|_| BPF_CLANG.to_string());
    let extra = env::var("CANOPY_BPF_EXTRA_CFLAGS").unwrap_or_default();
    if !extra.trim().is_empty() {
        println!("cargo:warning=BPF built with CANOPY_BPF_EXTRA_CFLAGS={extra}");
    }
    let mut sources: Vec<PathBuf> = [BPF_DIR, FIXTURE_DIR]
        .iter()
        .flat_map(|dir| fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir}: {e}")))
        .map(|entry| entry.expect("readable bpf/ entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for source in sources {
        let file = source.file_name().unwrap().to_string_lossy().to_string();
        let name = file.trim_end_matches(".bpf.c");
        let object = out_dir.join(format!("{name}.bpf.o"));
        let skeleton = out_dir.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&source)
            .obj(&object)
            .clang(&clang)
            .clang_args(
                [
                    "-g",
                    "-O2",
                    "-Wall",
                    "-Wno-compare-distinct-pointer-types",
                    "-D__TARGET_ARCH_x86",
                    "-mcpu=v3",
                    "-I",
                    BPF_DIR,
                    "-I",
                    "bpf/vmlinux",
                ]
                .into_iter()
                .chain(extra.split_whitespace()),
            )
            .build_and_generate(&skeleton)
            .unwrap_or_else(|err| panic!("building {}: {err:#}", source.display()));
    }
}

/// Writes `OUT_DIR/bpf_intf.rs` from `bpf/intf.h`.
fn generate_intf(out_dir: &Path) {
    let bindings = bindgen::Builder::default()
        .header(INTF_HEADER)
        .allowlist_type("canopy_.*")
        .allowlist_var("CANOPY_.*")
        .derive_default(true)
        .derive_debug(true)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate()
        .expect("bindgen understands bpf/intf.h");

    let header = fs::read_to_string(INTF_HEADER).expect("bpf/intf.h is readable");
    let mut generated = bindings.to_string();
    generated.push_str(&generate_stats(&header));
    generated.push_str(&generate_kconst_names(&header));
    fs::write(out_dir.join("bpf_intf.rs"), generated).expect("OUT_DIR is writable");
}

/// The body of a C enum `enum <name> { ... };` as its entry lines.
fn enum_lines<'a>(header: &'a str, name: &str) -> Vec<&'a str> {
    let start = header
        .find(&format!("enum {name} {{"))
        .unwrap_or_else(|| panic!("intf.h declares enum {name}"));
    let body = &header[start..];
    let end = body.find("};").expect("enum is closed");
    body[..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// `pub struct Stats` with one `u64` per `CANOPY_STAT_*` entry, and its description table.
fn generate_stats(header: &str) -> String {
    let mut fields = Vec::new();
    for line in enum_lines(header, "canopy_stat") {
        let Some(rest) = line.strip_prefix("CANOPY_STAT_") else {
            continue;
        };
        let (name, comment) = rest.split_once(',').expect("stat entry ends with a comma");
        let description = comment
            .trim()
            .strip_prefix("/*")
            .and_then(|c| c.strip_suffix("*/"))
            .unwrap_or_else(|| panic!("stat CANOPY_STAT_{name} has a /* description */"))
            .trim();
        fields.push((
            name.to_lowercase(),
            name.to_string(),
            description.to_string(),
        ));
    }
    let mut out = String::from(
        "\n/// Scheduler counters, one per `enum canopy_stat` entry (generated from intf.h).\n\
         #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]\npub struct Stats {\n",
    );
    for (field, _, description) in &fields {
        writeln!(out, "    /// {description}\n    pub {field}: u64,").unwrap();
    }
    out.push_str(
        "}\n\nimpl Stats {\n    /// (field name, description) for every counter, in enum order.\n",
    );
    out.push_str("    pub const DESCRIPTIONS: &'static [(&'static str, &'static str)] = &[\n");
    for (field, _, description) in &fields {
        writeln!(out, "        ({field:?}, {description:?}),").unwrap();
    }
    out.push_str(
        "    ];\n\n    /// Builds the struct from counters indexed by `enum canopy_stat`.\n",
    );
    out.push_str("    pub fn from_indexed(values: &[u64]) -> Self {\n        let at = |i: u32| values.get(i as usize).copied().unwrap_or(0);\n        Self {\n");
    for (field, name, _) in &fields {
        writeln!(out, "            {field}: at(CANOPY_STAT_{name}),").unwrap();
    }
    out.push_str(
        "        }\n    }\n\n    /// (field name, value) for every counter, in enum order.\n",
    );
    out.push_str("    pub fn values(&self) -> Vec<(&'static str, u64)> {\n        vec![\n");
    for (field, _, _) in &fields {
        writeln!(out, "            ({field:?}, self.{field}),").unwrap();
    }
    out.push_str("        ]\n    }\n}\n");
    out
}

/// `KCONST_NAMES[i]` is the kernel enum name behind `CANOPY_K_*` entry `i`.
fn generate_kconst_names(header: &str) -> String {
    let names: Vec<String> = enum_lines(header, "canopy_kconst")
        .into_iter()
        .filter_map(|line| line.strip_prefix("CANOPY_K_"))
        .map(|rest| rest.trim_end_matches(',').trim().to_string())
        .collect();
    let mut out = String::from(
        "\n/// Kernel enum names the loader resolves from BTF, indexed by `enum canopy_kconst`.\n\
         pub const KCONST_NAMES: &[&str] = &[\n",
    );
    for name in names {
        writeln!(out, "    {name:?},").unwrap();
    }
    out.push_str("];\n");
    out
}
