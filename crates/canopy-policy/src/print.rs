//! Printing a compiled plan back as one canonical policy file: every class with all its
//! parameters, every rule and group fully resolved. Compiling the printed text gives a plan with
//! the same hash (a property test checks it); `canopy compile` prints it.

use indexmap::IndexMap;
use toml::Spanned;

use crate::class::ClassId;
use crate::model::ClassDef;
use crate::model::DaemonDef;
use crate::model::DefaultsDef;
use crate::model::GroupDef;
use crate::model::PolicyFile;
use crate::model::RuleDef;
use crate::model::SchedulerKind;
use crate::model::StateDef;
use crate::model::ThreadRuleDef;
use crate::plan::Cap;
use crate::plan::Plan;
use crate::plan::Scheduler;
use crate::plan::SettingsOverrides;

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// The plan as one policy file in canonical form.
pub fn to_toml(plan: &Plan) -> String {
    let name = |id: ClassId| spanned(plan.class(id).name.clone());
    let names = |ids: &Vec<ClassId>| spanned(ids.iter().map(|&id| name(id)).collect::<Vec<_>>());
    let mut file = PolicyFile {
        defaults: Some(DefaultsDef {
            class: Some(name(plan.defaults().class)),
            leave_kernel_threads: Some(plan.defaults().leave_kernel_threads),
            leave_realtime: Some(plan.defaults().leave_realtime),
        }),
        daemon: Some(DaemonDef {
            socket_path: Some(plan.daemon().socket_path.clone()),
            metrics_address: plan.daemon().metrics_address.clone(),
            mode: Some(plan.daemon().mode),
        }),
        ..PolicyFile::default()
    };
    for (index, class) in plan.classes().iter().enumerate() {
        let after = (!class.builtin).then(|| name(ClassId(index as u8 - 1)));
        let p = &class.params;
        file.classes.insert(
            class.name.clone(),
            ClassDef {
                after,
                description: (!class.description.is_empty()).then(|| class.description.clone()),
                policy: Some(p.policy),
                nice: Some(spanned(p.nice.into())),
                slice_us: Some(spanned(p.slice_us.into())),
                uclamp_min: Some(spanned(p.uclamp_min.into())),
                uclamp_max: Some(spanned(p.uclamp_max.into())),
                weight: Some(spanned(p.weight.into())),
                preempt: Some(p.preempt),
            },
        );
    }
    for rule in plan.rules() {
        let c = &rule.conditions;
        let text = |value: &Option<String>| value.clone().map(spanned);
        file.rules.push(RuleDef {
            name: text(&rule.name),
            comm: text(&c.comm),
            exe: text(&c.exe),
            cmdline: text(&c.cmdline),
            cgroup: text(&c.cgroup),
            uid: c.uid,
            user: text(&c.user),
            parent_comm: text(&c.parent_comm),
            class: rule.class_explicit.then(|| name(rule.class)),
            inherit: Some(rule.inherit),
            threads: rule
                .threads
                .iter()
                .map(|thread| ThreadRuleDef {
                    name: spanned(thread.name.clone()),
                    class: name(thread.class),
                })
                .collect(),
        });
    }
    for group in plan.groups() {
        let (scheduler, external_ops) = match &group.scheduler {
            Scheduler::Canopy => (SchedulerKind::Canopy, None),
            Scheduler::External(ops) => (SchedulerKind::External, Some(spanned(ops.clone()))),
            Scheduler::None => (SchedulerKind::None, None),
        };
        let base = &group.base;
        let base_overrides = SettingsOverrides {
            weight: base.weight,
            allow: base.allow.clone(),
            deny: (!base.deny.is_empty()).then(|| base.deny.clone()),
            ceiling: base.ceiling,
            floor: base.floor,
            guarantee_percent: base.guarantee_percent,
            cap: base.cap,
        };
        let mut def = GroupDef {
            path: Some(spanned(group.path.clone())),
            scheduler: Some(spanned(scheduler)),
            external_ops,
            default_state: group.default_state.clone().map(spanned),
            ..GroupDef::default()
        };
        let settings = settings_fields(&base_overrides, &name, &names);
        (def.weight, def.allow, def.deny, def.ceiling, def.floor) =
            (settings.0, settings.1, settings.2, settings.3, settings.4);
        (
            def.guarantee_percent,
            def.cap_percent,
            def.cap_quota_us,
            def.cap_period_us,
        ) = (settings.5, settings.6, settings.7, settings.8);
        let mut states = IndexMap::new();
        for state in &group.states {
            let s = settings_fields(&state.overrides, &name, &names);
            states.insert(
                state.name.clone(),
                StateDef {
                    after_s: Some(state.after_s),
                    user_settable: Some(state.user_settable),
                    weight: s.0,
                    allow: s.1,
                    deny: s.2,
                    ceiling: s.3,
                    floor: s.4,
                    guarantee_percent: s.5,
                    cap_percent: s.6,
                    cap_quota_us: s.7,
                    cap_period_us: s.8,
                },
            );
        }
        def.states = states;
        file.groups.insert(group.name.clone(), def);
    }
    toml::to_string(&file).expect("policy files serialize")
}

type ClassList = Spanned<Vec<Spanned<String>>>;
type Fields = (
    Option<Spanned<i64>>,
    Option<ClassList>,
    Option<ClassList>,
    Option<Spanned<String>>,
    Option<Spanned<String>>,
    Option<Spanned<i64>>,
    Option<Spanned<i64>>,
    Option<Spanned<i64>>,
    Option<Spanned<i64>>,
);

fn settings_fields(
    o: &SettingsOverrides,
    name: &dyn Fn(ClassId) -> Spanned<String>,
    names: &dyn Fn(&Vec<ClassId>) -> ClassList,
) -> Fields {
    let (cap_percent, quota, period) = match o.cap {
        Some(Cap::Percent(percent)) => (Some(spanned(percent.into())), None, None),
        Some(Cap::Quota {
            quota_us,
            period_us,
        }) => (
            None,
            Some(spanned(quota_us as i64)),
            Some(spanned(period_us as i64)),
        ),
        None => (None, None, None),
    };
    (
        o.weight.map(|w| spanned(w.into())),
        o.allow.as_ref().map(names),
        o.deny.as_ref().map(names),
        o.ceiling.map(name),
        o.floor.map(name),
        o.guarantee_percent.map(|g| spanned(g.into())),
        cap_percent,
        quota,
        period,
    )
}
