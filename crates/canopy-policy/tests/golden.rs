//! Golden tests of the exact diagnostics: each `golden/NAME.toml` (or `golden/NAME/*.toml`, merged
//! in lexical order as drop-ins) is compiled and its diagnostics compared with
//! `golden/NAME.expected`. Set `CANOPY_BLESS=1` to rewrite the expected files. One case per
//! validation problem; `every_problem_has_a_golden_case` keeps it that way.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::path::PathBuf;

use canopy_policy::compile;
use canopy_policy::Source;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn sources(name: &str) -> Vec<Source> {
    let dir = golden_dir();
    let single = dir.join(format!("{name}.toml"));
    if single.exists() {
        return vec![Source::new(
            format!("{name}.toml"),
            fs::read_to_string(single).unwrap(),
        )];
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let display = format!("{name}/{}", path.file_name().unwrap().to_str().unwrap());
            Source::new(display, fs::read_to_string(path).unwrap())
        })
        .collect()
}

/// The rendered outcome: every diagnostic, then `ok` or `rejected`, and the codes seen.
fn render(name: &str) -> (String, Vec<&'static str>) {
    let (diagnostics, verdict) = match compile(&sources(name)) {
        Ok(compiled) => (compiled.warnings, "ok"),
        Err(error) => (error.diagnostics, "rejected"),
    };
    let mut text: String = diagnostics.iter().map(|d| format!("{d}\n")).collect();
    text.push_str(verdict);
    text.push('\n');
    (text, diagnostics.iter().map(|d| d.problem.code()).collect())
}

fn check(name: &str) -> Vec<&'static str> {
    let (actual, codes) = render(name);
    let expected_path = golden_dir().join(format!("{name}.expected"));
    if std::env::var_os("CANOPY_BLESS").is_some() {
        fs::write(&expected_path, &actual).unwrap();
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "golden {name} differs (CANOPY_BLESS=1 rewrites it)"
    );
    codes
}

macro_rules! golden {
    ($($name:ident),+ $(,)?) => {
        $( #[test] fn $name() { check(stringify!($name)); } )+
        const CASES: &[&str] = &[$(stringify!($name)),+];
    };
}

golden!(
    syntax,
    unknown_section,
    unknown_field,
    wrong_type,
    missing_field,
    unknown_class,
    out_of_range,
    allow_deny_contradiction,
    ceiling_below_floor,
    nothing_allowed,
    shadowed_rule,
    scheduler_conflict,
    shadowed_group,
    nesting_too_deep,
    invalid_regex,
    invalid_glob,
    state_unknown_field,
    unknown_state,
    redefinition,
    builtin_class_moved,
    custom_class_unplaced,
    class_order_cycle,
    empty_rule,
    rule_without_effect,
    duplicate_rule_name,
    empty_pattern,
    scheduler_settings,
    share_settings,
    uclamp_inverted,
    bad_group_path,
    too_many_classes,
    dropin_merge,
    valid_policy_with_custom_class,
    ineffective_setting,
    unpinned_promotion,
);

#[test]
fn every_problem_has_a_golden_case() {
    let seen: BTreeSet<&str> = CASES.iter().flat_map(|name| render(name).1).collect();
    let all = [
        "syntax",
        "unknown-section",
        "unknown-field",
        "state-unknown-field",
        "missing-field",
        "wrong-type",
        "unknown-class",
        "out-of-range",
        "allow-deny-contradiction",
        "ceiling-below-floor",
        "nothing-allowed",
        "shadowed-rule",
        "scheduler-conflict",
        "shadowed-group",
        "nesting-too-deep",
        "invalid-regex",
        "invalid-glob",
        "unknown-state",
        "redefinition",
        "builtin-class-moved",
        "custom-class-unplaced",
        "class-order-cycle",
        "too-many-classes",
        "empty-rule",
        "rule-without-effect",
        "duplicate-rule-name",
        "empty-pattern",
        "scheduler-settings",
        "share-settings",
        "uclamp-inverted",
        "bad-group-path",
        "ineffective-setting",
        "unpinned-promotion",
    ];
    let missing: Vec<&&str> = all.iter().filter(|code| !seen.contains(**code)).collect();
    assert!(
        missing.is_empty(),
        "problem codes without a golden case: {missing:?}"
    );
}
