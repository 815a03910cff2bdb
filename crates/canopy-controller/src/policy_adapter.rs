//! `canopy_policy::Plan` behind the controller's [`PolicyPlan`] port, and the loader that
//! compiles the policy files (found and read by `canopy_sys::policy_files`, the same rules as
//! `canopy check`).
//! The clamp is the Plan's own `effective_class`; this file only translates types.
//!
//! Conventions the daemon adds on top of the language: the states named `focused` and
//! `unfocused` are the ones the GNOME focus xattr selects, each after its own `after_s`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_policy as policy;

use crate::policy_port::*;

/// A compiled Plan plus the translated tables the controller reads often.
#[derive(Debug)]
pub struct CompiledPlan {
    plan: policy::Plan,
    classes: Vec<ClassParams>,
    rule_names: Vec<Arc<str>>,
    group_names: Vec<Arc<str>>,
    ncpus: u32,
}

impl CompiledPlan {
    /// Wraps a compiled plan.
    pub fn new(plan: policy::Plan) -> Self {
        let classes = plan
            .classes()
            .iter()
            .map(|c| ClassParams {
                name: Arc::from(c.name.as_str()),
                scx_id: c.id.0 as u32,
                policy: match c.params.policy {
                    policy::SchedPolicy::Normal => FairPolicy::Normal,
                    policy::SchedPolicy::Batch => FairPolicy::Batch,
                    policy::SchedPolicy::Idle => FairPolicy::Idle,
                },
                nice: c.params.nice as i32,
                slice_ns: c.params.slice_us as u64 * 1000,
                uclamp_min: c.params.uclamp_min as u32,
                uclamp_max: c.params.uclamp_max as u32,
            })
            .collect();
        let rule_names = plan
            .rules()
            .iter()
            .enumerate()
            .map(|(i, r)| Arc::from(r.label(i).trim_matches('`')))
            .collect();
        let group_names = plan
            .groups()
            .iter()
            .map(|g| Arc::from(g.name.as_str()))
            .collect();
        let ncpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        CompiledPlan {
            plan,
            classes,
            rule_names,
            group_names,
            ncpus,
        }
    }

    /// The wrapped plan.
    pub fn inner(&self) -> &policy::Plan {
        &self.plan
    }

    fn group(&self, g: GroupId) -> &policy::Group {
        self.plan.group(policy::GroupRef(g.0 as usize))
    }
}

impl PolicyPlan for CompiledPlan {
    fn hash(&self) -> String {
        self.plan.hash_hex()
    }

    fn default_class(&self) -> Option<ClassId> {
        Some(self.plan.defaults().class)
    }

    // Class ids are this plan's own (every id the controller holds is re-derived when a plan
    // is installed), so they index its class table.
    #[allow(clippy::indexing_slicing)]
    fn class_params(&self, class: ClassId) -> &ClassParams {
        &self.classes[class.index()]
    }

    fn class_by_name(&self, name: &str) -> Option<ClassId> {
        self.plan.class_id(name)
    }

    fn match_task(&self, facts: &ThreadFacts) -> Option<RuleMatch> {
        let p = &facts.process;
        let task = policy::TaskFacts {
            comm: &p.comm,
            thread_name: &facts.comm,
            exe: (!p.exe.is_empty()).then_some(&*p.exe),
            cmdline: (!p.cmdline.is_empty()).then_some(&*p.cmdline),
            cgroup: &p.cgroup,
            uid: p.uid,
            user: p.user.as_deref(),
            parent_comm: (!p.parent_comm.is_empty()).then_some(p.parent_comm.as_str()),
        };
        let m = self.plan.match_task(&task)?;
        // canopy-policy decided which thread rule matched; only its name is looked up here.
        let thread_rule = match m.thread_rule {
            Some(index) => Some(Arc::from(
                self.plan
                    .rules()
                    .get(m.rule)?
                    .threads
                    .get(index)?
                    .name
                    .as_str(),
            )),
            None => None,
        };
        Some(RuleMatch {
            rule: self.rule_names.get(m.rule)?.clone(),
            class: m.requested_class(),
            thread_rule,
            inherit: m.inherit,
        })
    }

    fn group_for_cgroup(&self, cgroup: &str) -> Option<GroupId> {
        self.plan
            .group_for_cgroup(cgroup)
            .map(|g| GroupId(g.0 as u32))
    }

    // Group ids are this plan's own, like class ids (see `class_params`).
    #[allow(clippy::indexing_slicing)]
    fn group_name(&self, group: GroupId) -> Arc<str> {
        self.group_names[group.0 as usize].clone()
    }

    fn effective_class(
        &self,
        requested: ClassId,
        group: Option<GroupId>,
        state: Option<&str>,
    ) -> Clamp {
        let d = self.plan.effective_class(
            requested,
            group.map(|g| policy::GroupRef(g.0 as usize)),
            state,
        );
        Clamp {
            class: d.class,
            reason: match d.reason {
                policy::Reason::NoGroup | policy::Reason::Allowed => ClampReason::Unclamped,
                policy::Reason::ClampedToCeiling => ClampReason::Ceiling,
                policy::Reason::RaisedToFloor => ClampReason::Floor,
                policy::Reason::NotAllowed => ClampReason::Denied,
            },
        }
    }

    fn state_info(&self, group: GroupId, state: &str) -> Option<StateInfo> {
        self.group(group).state(state).map(|s| StateInfo {
            user_settable: s.user_settable,
            after: Duration::from_secs(s.after_s as u64),
        })
    }

    fn focus_states(&self, group: GroupId) -> Option<FocusStates> {
        let g = self.group(group);
        let focused = g.state("focused").map(|s| s.name.clone());
        let unfocused = g.state("unfocused").map(|s| s.name.clone());
        (focused.is_some() || unfocused.is_some()).then_some(FocusStates { focused, unfocused })
    }

    fn default_state(&self, group: GroupId) -> Option<String> {
        self.group(group).default_state.clone()
    }

    fn group_knobs(&self, group: GroupId, state: Option<&str>) -> GroupKnobs {
        let s = self.group(group).settings(state);
        let pct = |v: u16| v as f64 * 100.0 / 1024.0;
        GroupKnobs {
            weight: s.weight,
            idle: None,
            uclamp_min_pct: s.floor.map(|f| pct(self.plan.class_params(f).uclamp_min)),
            uclamp_max_pct: s.ceiling.map(|c| pct(self.plan.class_params(c).uclamp_max)),
            max: s
                .share_terms(self.ncpus)
                .cap_quota
                .map(|quota| (Some(quota.quota_us), quota.period_us)),
        }
    }

    fn scx_group_policy(&self, group: GroupId, state: Option<&str>) -> ScxGroupPolicy {
        let g = self.group(group);
        let s = g.settings(state);
        let terms = s.share_terms(self.ncpus);
        ScxGroupPolicy {
            weight: terms.weight,
            guarantee_pct: terms.guarantee_percent,
            cap_pct: terms.cap_percent,
            floor: s.floor,
            ceiling: s.ceiling,
            state: state
                .and_then(|n| g.states.iter().position(|st| st.name == n))
                .map(|i| i as u32 + 1)
                .unwrap_or(0),
        }
    }

    fn manage_kernel_threads(&self) -> bool {
        !self.plan.defaults().leave_kernel_threads
    }

    fn manage_realtime(&self) -> bool {
        !self.plan.defaults().leave_realtime
    }

    fn uses_cmdline(&self) -> bool {
        self.plan
            .rules()
            .iter()
            .any(|rule| rule.conditions.cmdline.is_some())
    }

    fn compiled(&self) -> Option<&canopy_policy::Plan> {
        Some(&self.plan)
    }
}

/// Reads and compiles the policy at `paths`. The error is the full diagnostics text.
pub fn load_policy(paths: &[PathBuf]) -> Result<Arc<dyn PolicyPlan>, String> {
    load_compiled(paths).map(|p| Arc::new(p) as Arc<dyn PolicyPlan>)
}

/// Like [`load_policy`], keeping the concrete type (the binary reads the daemon settings).
pub fn load_compiled(paths: &[PathBuf]) -> Result<CompiledPlan, String> {
    let sources: Vec<policy::Source> = canopy_sys::policy_files::read_policy(paths)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|file| policy::Source::new(file.name(), file.text))
        .collect();
    match policy::compile(&sources) {
        Ok(compiled) => {
            for w in &compiled.warnings {
                tracing::warn!("{w}");
            }
            Ok(CompiledPlan::new(compiled.plan))
        }
        Err(e) => Err(e
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

/// A [`PlanLoader`] over `paths`.
pub fn loader(paths: Vec<PathBuf>) -> PlanLoader {
    Arc::new(move || load_policy(&paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[rules]]
name = "player"
comm = "player"
class = "USER_INITIATED"
threads = [{ name = "audio*", class = "USER_INTERACTIVE" }]

[groups.apps]
path = "user.slice/user-*.slice/user@*.service/app.slice/*"
[groups.apps.states.focused]
user_settable = true
[groups.apps.states.unfocused]
after_s = 30
ceiling = "UTILITY"
user_settable = true
[groups.apps.states.minimized]
ceiling = "BACKGROUND"
user_settable = true
"#;

    #[test]
    fn the_real_plan_drives_the_port() {
        let dir = std::env::temp_dir().join(format!("canopy-adapter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        let plan = match load_policy(std::slice::from_ref(&dir)) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let facts = ThreadFacts {
            tid: 2,
            comm: "audio-out".into(),
            process: Arc::new(ProcessFacts {
                tgid: 1,
                comm: "player".into(),
                cgroup: "user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope".into(),
                ..Default::default()
            }),
        };
        let m = plan.match_task(&facts).unwrap();
        assert_eq!(&*plan.class_params(m.class).name, "USER_INTERACTIVE");
        assert_eq!(m.thread_rule.as_deref(), Some("audio*"));
        let g = plan.group_for_cgroup(&facts.process.cgroup).unwrap();
        let c = plan.effective_class(m.class, Some(g), Some("minimized"));
        assert_eq!(&*plan.class_params(c.class).name, "BACKGROUND");
        assert_eq!(c.reason, ClampReason::Ceiling);
        assert_eq!(
            plan.state_info(g, "unfocused").unwrap().after,
            Duration::from_secs(30)
        );
        assert!(plan.focus_states(g).unwrap().focused.is_some());
        assert!(!plan.uses_cmdline(), "no rule matches on the command line");
        std::fs::write(
            dir.join("policy.toml"),
            "[[rules]]\ncmdline = '--job=1'\nclass = 'BACKGROUND'\n",
        )
        .unwrap();
        assert!(load_policy(std::slice::from_ref(&dir))
            .unwrap()
            .uses_cmdline());
        std::fs::write(
            dir.join("policy.toml"),
            "[[rules]]\ncomm = 'x'\nclass = 'NOPE'\n",
        )
        .unwrap();
        let err = load_policy(std::slice::from_ref(&dir)).unwrap_err();
        assert!(err.contains("policy.toml:"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
