//! Property tests: a generated policy, printed as TOML and parsed back, compiles to the same plan
//! hash; printing a plan canonically is idempotent; and the matcher agrees with a naive
//! first-match scan over the rules.

use canopy_policy::compile_str;
use canopy_policy::model::ClassDef;
use canopy_policy::model::GroupDef;
use canopy_policy::model::PolicyFile;
use canopy_policy::model::RuleDef;
use canopy_policy::model::SchedPolicy;
use canopy_policy::model::SchedulerKind;
use canopy_policy::model::StateDef;
use canopy_policy::model::ThreadRuleDef;
use canopy_policy::to_toml;
use canopy_policy::TaskFacts;
use proptest::prelude::*;
use toml::Spanned;

const CLASSES: [&str; 5] = [
    "USER_INTERACTIVE",
    "USER_INITIATED",
    "DEFAULT",
    "UTILITY",
    "BACKGROUND",
];
const NAMES: [&str; 6] = ["make", "cc1", "rustc", "firefox", "pipewire", "bash"];
const GLOBS: [&str; 5] = ["cc*", "*fox", "pipe*", "{make,ninja}", "r?stc"];

fn s<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

fn class_name() -> impl Strategy<Value = String> {
    prop::sample::select(&CLASSES[..]).prop_map(str::to_string)
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&NAMES[..]).prop_map(str::to_string),
        prop::sample::select(&GLOBS[..]).prop_map(str::to_string),
    ]
}

fn rule() -> impl Strategy<Value = RuleDef> {
    (
        prop::option::of(pattern()),
        prop::option::of(pattern()),
        prop::option::of(prop::sample::select(vec!["^make ", "--release", "x[0-9]+"])),
        prop::option::of(0u32..3),
        class_name(),
        prop::option::of(any::<bool>()),
        prop::collection::vec((pattern(), class_name()), 0..3),
    )
        .prop_map(|(comm, exe, cmdline, uid, class, inherit, threads)| {
            let mut rule = RuleDef {
                comm: comm.map(s),
                exe: exe.map(s),
                cmdline: cmdline.map(|c| s(c.to_string())),
                uid,
                class: Some(s(class)),
                inherit,
                threads: threads
                    .into_iter()
                    .map(|(name, class)| ThreadRuleDef {
                        name: s(name),
                        class: s(class),
                    })
                    .collect(),
                ..RuleDef::default()
            };
            if rule.comm.is_none()
                && rule.exe.is_none()
                && rule.cmdline.is_none()
                && rule.uid.is_none()
            {
                rule.comm = Some(s("fallback".into()));
            }
            rule
        })
}

fn group(index: usize) -> impl Strategy<Value = GroupDef> {
    (
        1i64..10_000,
        prop::option::of(0usize..2),
        prop::option::of(3usize..5),
        prop::option::of(1i64..50),
        prop::option::of(prop::sample::select(vec![
            SchedulerKind::Canopy,
            SchedulerKind::None,
        ])),
        prop::option::of((
            0u32..60,
            any::<bool>(),
            prop::option::of(3usize..5),
            prop::option::of(1i64..10_000),
        )),
    )
        .prop_map(
            move |(weight, ceiling, floor, guarantee, scheduler, state)| {
                let mut group = GroupDef {
                    path: Some(s(format!("tenants/t{index}/*"))),
                    weight: Some(s(weight)),
                    ceiling: ceiling.map(|c| s(CLASSES[c].to_string())),
                    floor: floor.map(|f| s(CLASSES[f].to_string())),
                    guarantee_percent: guarantee.map(s),
                    scheduler: scheduler.map(s),
                    ..GroupDef::default()
                };
                if let Some((after_s, user_settable, ceiling, weight)) = state {
                    group.states.insert(
                        "unfocused".into(),
                        StateDef {
                            after_s: Some(after_s),
                            user_settable: Some(user_settable),
                            ceiling: ceiling.map(|c| s(CLASSES[c].to_string())),
                            weight: weight.map(s),
                            ..StateDef::default()
                        },
                    );
                    group.default_state = Some(s("unfocused".into()));
                }
                group
            },
        )
}

fn policy() -> impl Strategy<Value = PolicyFile> {
    (
        prop::collection::vec(rule(), 0..12),
        (0usize..4).prop_flat_map(|count| (0..count).map(group).collect::<Vec<_>>()),
        prop::option::of((
            -20i64..20,
            100i64..100_000,
            prop::sample::select(vec![SchedPolicy::Normal, SchedPolicy::Batch]),
        )),
        any::<bool>(),
    )
        .prop_map(|(rules, groups, override_class, custom)| {
            let mut file = PolicyFile {
                rules,
                ..PolicyFile::default()
            };
            for (index, group) in groups.into_iter().enumerate() {
                file.groups.insert(format!("g{index}"), group);
            }
            if let Some((nice, slice_us, policy)) = override_class {
                file.classes.insert(
                    "UTILITY".into(),
                    ClassDef {
                        nice: Some(s(nice)),
                        slice_us: Some(s(slice_us)),
                        policy: Some(policy),
                        ..ClassDef::default()
                    },
                );
            }
            if custom {
                file.classes.insert(
                    "GAME".into(),
                    ClassDef {
                        after: Some(s("USER_INTERACTIVE".into())),
                        ..ClassDef::default()
                    },
                );
            }
            file
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn printed_policy_parses_back_to_the_same_plan_hash(file in policy()) {
        let text = toml::to_string(&file).unwrap();
        let first = match compile_str("generated.toml", &text) {
            Ok(compiled) => compiled.plan,
            Err(error) => {
                // Generated groups may be contradictory (ceiling below floor); those must be
                // rejected with diagnostics, never compile.
                prop_assert!(!error.diagnostics.is_empty());
                return Ok(());
            }
        };
        let printed = to_toml(&first);
        let second = compile_str("printed.toml", &printed).map_err(|e| TestCaseError::fail(format!("{:?}\n{printed}", e.diagnostics))).unwrap().plan;
        prop_assert_eq!(first.hash_hex(), second.hash_hex(), "{}", printed);
        prop_assert_eq!(&printed, &to_toml(&second));
    }

    #[test]
    fn indexed_matcher_agrees_with_a_naive_scan(file in policy(), comm in pattern(), exe in pattern(), uid in 0u32..3) {
        let text = toml::to_string(&file).unwrap();
        let Ok(compiled) = compile_str("generated.toml", &text) else { return Ok(()) };
        let plan = compiled.plan;
        let comm = comm.replace(['*', '?', '{', '}', ','], "x");
        let exe_path = format!("/usr/bin/{}", exe.replace(['*', '?', '{', '}', ','], "x"));
        let cmdline = format!("{comm} --release x42");
        let task = TaskFacts { comm: &comm, thread_name: &comm, exe: Some(&exe_path), cmdline: Some(&cmdline), cgroup: "tenants/t0/a", uid, user: None, parent_comm: None };
        let naive = plan.rules().iter().position(|rule| {
            let c = &rule.conditions;
            let glob = |pattern: &str, value: &str| globset::Glob::new(pattern).unwrap().compile_matcher().is_match(value);
            c.comm.as_deref().is_none_or(|p| glob(p, &comm))
                && c.exe.as_deref().is_none_or(|p| glob(p, exe_path.rsplit('/').next().unwrap()))
                && c.cmdline.as_deref().is_none_or(|p| regex::Regex::new(p).unwrap().is_match(&cmdline))
                && c.uid.is_none_or(|u| u == uid)
        });
        prop_assert_eq!(plan.match_task(&task).map(|m| m.rule), naive);
    }
}

/// Fragments of TOML, valid and broken, so random concatenations reach deep into the parser
/// and the validator (a cheap, always-run companion of the libFuzzer `policy` target in `fuzz/`).
const FRAGMENTS: &[&str] = &[
    "[[rules]]\n",
    "[groups.a]\n",
    "[groups.a.states.s]\n",
    "[classes.X]\n",
    "[defaults]\n",
    "[daemon]\n",
    "comm = \"make\"\n",
    "exe = \"/usr/*/x\"\n",
    "cmdline = \"(\"\n",
    "class = \"BACKGROUND\"\n",
    "class = \"NOPE\"\n",
    "path = \"a/*\"\n",
    "path = \"/x\"\n",
    "weight = 0\n",
    "weight = 99999\n",
    "ceiling = \"BACKGROUND\"\n",
    "floor = \"USER_INTERACTIVE\"\n",
    "allow = [\"UTILITY\"]\n",
    "deny = [\"UTILITY\"]\n",
    "after = \"X\"\n",
    "after = \"UTILITY\"\n",
    "threads = [{name = \"t\", class = \"DEFAULT\"}]\n",
    "scheduler = \"external\"\n",
    "external_ops = []\n",
    "cap_percent = 0\n",
    "cap_quota_us = 5\n",
    "default_state = \"s\"\n",
    "x = [[[\n",
    "\"unterminated\n",
    "= 3\n",
    "mode = \"scx\"\n",
    "nice = -99\n",
    "uid = -1\n",
    "inherit = \"yes\"\n",
    "é = 1\n",
    "[[rules.threads]]\n",
    "name = \"\"\n",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn compile_never_panics_on_arbitrary_text(pieces in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..30), noise in ".{0,20}") {
        let mut text: String = pieces.concat();
        text.push_str(&noise);
        match compile_str("fuzz.toml", &text) {
            Ok(compiled) => {
                let printed = to_toml(&compiled.plan);
                let again = compile_str("printed.toml", &printed).map_err(|e| TestCaseError::fail(format!("{:?}", e.diagnostics))).unwrap();
                prop_assert_eq!(compiled.plan.hash(), again.plan.hash());
            }
            Err(error) => prop_assert!(error.diagnostics.iter().any(|d| d.is_error())),
        }
    }
}
