//! The semantic difference of two plans: which classes, defaults, daemon settings, rules and
//! groups were added, removed or changed (field by field), and whether rule evaluation order
//! changed. Comments, file layout and spelling that resolve identically produce no change.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::plan::Plan;
use crate::rule::Rule;

/// One difference between two plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub kind: char,
    /// What changed, e.g. `class USER_INTERACTIVE` or `group apps`.
    pub item: String,
    /// Field-level detail (`nice: -4 -> -5`), empty for additions and removals.
    pub details: Vec<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.item)?;
        for detail in &self.details {
            write!(f, "\n    {detail}")?;
        }
        Ok(())
    }
}

/// Field-by-field differences of two JSON values (objects are walked, everything else compared).
fn field_changes(prefix: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                field_changes(
                    &path,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if old != new => out.push(format!("{prefix}: {} -> {}", compact(old), compact(new))),
        _ => {}
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::Null => "(unset)".into(),
        other => other.to_string(),
    }
}

/// Class ids are replaced by names so that inserting a class doesn't show every reference as
/// changed.
fn named_json<T: Serialize>(plan: &Plan, value: &T) -> Value {
    let json = serde_json::to_value(value).expect("plan data serializes");
    rename_classes(plan, json)
}

fn rename_classes(plan: &Plan, value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let is_class_field = matches!(
                        key.as_str(),
                        "class" | "ceiling" | "floor" | "allow" | "deny"
                    );
                    let value = if is_class_field {
                        ids_to_names(plan, value)
                    } else {
                        rename_classes(plan, value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| rename_classes(plan, item))
                .collect(),
        ),
        other => other,
    }
}

fn ids_to_names(plan: &Plan, value: Value) -> Value {
    match value {
        Value::Number(number) => number
            .as_u64()
            .and_then(|id| plan.classes().get(id as usize))
            .map_or(Value::Number(number), |class| {
                Value::String(class.name.clone())
            }),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| ids_to_names(plan, item))
                .collect(),
        ),
        other => rename_classes(plan, other),
    }
}

/// Rules are identified by name, or by their conditions when unnamed.
fn rule_key(rule: &Rule) -> String {
    match &rule.name {
        Some(name) => format!("rule `{name}`"),
        None => format!("rule {}", rule.conditions.describe()),
    }
}

/// The semantic changes from `old` to `new`; empty when they have the same hash.
pub fn diff(old: &Plan, new: &Plan) -> Vec<Change> {
    let mut changes = Vec::new();
    if old.hash() == new.hash() {
        return changes;
    }
    // Classes, by name.
    let old_order: Vec<&str> = old.classes().iter().map(|c| c.name.as_str()).collect();
    let new_order: Vec<&str> = new.classes().iter().map(|c| c.name.as_str()).collect();
    for class in old.classes() {
        match new.classes().iter().find(|c| c.name == class.name) {
            None => changes.push(Change {
                kind: '-',
                item: format!("class {}", class.name),
                details: Vec::new(),
            }),
            Some(other) => {
                let mut details = Vec::new();
                let mut a = serde_json::to_value(class).expect("serializes");
                let mut b = serde_json::to_value(other).expect("serializes");
                a.as_object_mut().map(|m| m.remove("id"));
                b.as_object_mut().map(|m| m.remove("id"));
                field_changes("", &a, &b, &mut details);
                if !details.is_empty() {
                    changes.push(Change {
                        kind: '~',
                        item: format!("class {}", class.name),
                        details,
                    });
                }
            }
        }
    }
    for class in new.classes() {
        if !old_order.contains(&class.name.as_str()) {
            changes.push(Change {
                kind: '+',
                item: format!("class {}", class.name),
                details: vec![format!("position {}", class.id.0)],
            });
        }
    }
    let common_old: Vec<&str> = old_order
        .iter()
        .copied()
        .filter(|n| new_order.contains(n))
        .collect();
    let common_new: Vec<&str> = new_order
        .iter()
        .copied()
        .filter(|n| old_order.contains(n))
        .collect();
    if common_old != common_new {
        changes.push(Change {
            kind: '~',
            item: "class order".into(),
            details: vec![format!(
                "{} -> {}",
                common_old.join(" > "),
                common_new.join(" > ")
            )],
        });
    }
    // Defaults and daemon.
    for (item, a, b) in [
        (
            "defaults",
            named_json(old, old.defaults()),
            named_json(new, new.defaults()),
        ),
        (
            "daemon",
            named_json(old, old.daemon()),
            named_json(new, new.daemon()),
        ),
    ] {
        let mut details = Vec::new();
        field_changes("", &a, &b, &mut details);
        if !details.is_empty() {
            changes.push(Change {
                kind: '~',
                item: item.into(),
                details,
            });
        }
    }
    // Rules, by name or by their conditions.
    let old_rules: Vec<(String, &Rule)> = old.rules().iter().map(|r| (rule_key(r), r)).collect();
    let new_rules: Vec<(String, &Rule)> = new.rules().iter().map(|r| (rule_key(r), r)).collect();
    let new_index: HashMap<&str, usize> = new_rules
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    let old_index: HashMap<&str, usize> = old_rules
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    for (position, (key, rule)) in old_rules.iter().enumerate() {
        match new_index.get(key.as_str()) {
            None => changes.push(Change {
                kind: '-',
                item: format!("{key} (was #{})", position + 1),
                details: Vec::new(),
            }),
            Some(&new_position) => {
                let mut details = Vec::new();
                field_changes(
                    "",
                    &named_json(old, rule),
                    &named_json(new, new_rules[new_position].1),
                    &mut details,
                );
                if !details.is_empty() {
                    changes.push(Change {
                        kind: '~',
                        item: key.clone(),
                        details,
                    });
                }
            }
        }
    }
    for (position, (key, _)) in new_rules.iter().enumerate() {
        if !old_index.contains_key(key.as_str()) {
            changes.push(Change {
                kind: '+',
                item: format!("{key} (#{})", position + 1),
                details: Vec::new(),
            });
        }
    }
    let kept_old: Vec<&str> = old_rules
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| new_index.contains_key(k))
        .collect();
    let kept_new: Vec<&str> = new_rules
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| old_index.contains_key(k))
        .collect();
    if kept_old != kept_new {
        changes.push(Change {
            kind: '~',
            item: "rule order".into(),
            details: vec![
                "rules present in both policies are evaluated in a different order".into(),
            ],
        });
    }
    // Groups, by name.
    for group in old.groups() {
        match new.groups().iter().find(|g| g.name == group.name) {
            None => changes.push(Change {
                kind: '-',
                item: format!("group {}", group.name),
                details: Vec::new(),
            }),
            Some(other) => {
                let mut details = Vec::new();
                let mut a = named_json(old, group);
                let mut b = named_json(new, other);
                // `allowed` is a derived bitmask over ids; compare it by names.
                for (value, plan) in [(&mut a, old), (&mut b, new)] {
                    strip_masks(value, plan);
                }
                field_changes("", &a, &b, &mut details);
                if !details.is_empty() {
                    changes.push(Change {
                        kind: '~',
                        item: format!("group {}", group.name),
                        details,
                    });
                }
            }
        }
    }
    for group in new.groups() {
        if !old.groups().iter().any(|g| g.name == group.name) {
            changes.push(Change {
                kind: '+',
                item: format!("group {} ({})", group.name, group.path),
                details: Vec::new(),
            });
        }
    }
    changes
}

fn strip_masks(value: &mut Value, plan: &Plan) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Number(mask)) = map.get("allowed").cloned() {
                let bits = mask.as_u64().unwrap_or(0);
                let names: Vec<Value> = plan
                    .classes()
                    .iter()
                    .filter(|class| bits & (1 << class.id.0) != 0)
                    .map(|class| Value::String(class.name.clone()))
                    .collect();
                map.insert("allowed".into(), Value::Array(names));
            }
            for child in map.values_mut() {
                strip_masks(child, plan);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| strip_masks(item, plan)),
        _ => {}
    }
}
