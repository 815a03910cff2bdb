//! Conversion of a schedqos configuration (`qos_mappings.json` and `app_configs/*.json`) into an
//! equivalent canopy policy. Pure: the caller reads the files. Unlike schedqos, an unknown class
//! name is an error (schedqos silently maps it to DEFAULT).
//!
//! Semantics kept: an app key matches the basename of the program (a `/` in the key: the full
//! path), so it becomes an `exe` condition; `thread_qos` keys match thread names and become
//! thread rules (for an array value the last class wins, as in schedqos); literal keys are
//! emitted before glob keys because schedqos tries an exact lookup first. `period` and `version`
//! have no effect on fair tasks and are dropped with a comment.

use serde_json::Value;

use crate::glob::is_literal;

/// Why a schedqos configuration could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A file is not valid JSON.
    #[error("{file}: invalid JSON: {reason}")]
    Json { file: String, reason: String },
    /// A value of the wrong shape.
    #[error("{file}: {path}: {expected}")]
    Shape {
        file: String,
        path: String,
        expected: String,
    },
    /// A class name schedqos doesn't have.
    #[error(
        "{file}: {path}: unknown QoS class `{name}` (schedqos would silently use QOS_DEFAULT)"
    )]
    UnknownClass {
        file: String,
        path: String,
        name: String,
    },
    /// A scheduling attribute canopy can't express for a class.
    #[error("{file}: {path}: {reason}")]
    Unsupported {
        file: String,
        path: String,
        reason: String,
    },
}

const TAGS: [(&str, &str); 5] = [
    ("QOS_USER_INTERACTIVE", "USER_INTERACTIVE"),
    ("QOS_USER_INITIATED", "USER_INITIATED"),
    ("QOS_UTILITY", "UTILITY"),
    ("QOS_BACKGROUND", "BACKGROUND"),
    ("QOS_DEFAULT", "DEFAULT"),
];

fn class_of(file: &str, path: &str, value: &Value) -> Result<&'static str, ImportError> {
    let Some(name) = value.as_str() else {
        return Err(ImportError::Shape {
            file: file.into(),
            path: path.into(),
            expected: "expected a class name string".into(),
        });
    };
    TAGS.iter()
        .find(|(tag, _)| *tag == name)
        .map(|(_, class)| *class)
        .ok_or_else(|| ImportError::UnknownClass {
            file: file.into(),
            path: path.into(),
            name: name.into(),
        })
}

/// An app key or thread name must not be empty, and one canopy reads as a glob (it has glob
/// syntax) must compile as one, as the policy compiler will build it (a path glob when an app
/// key has a `/`); else the import fails here, naming it, instead of writing a policy that does
/// not compile (both found by the coverage-guided `schedqos` fuzz target: keys `hackbe}ch`, ``).
fn check_glob(file: &str, path: &str, pattern: &str, is_path: bool) -> Result<(), ImportError> {
    if pattern.is_empty() {
        // matches nothing in schedqos either; canopy's compiler refuses an empty pattern
        return Err(ImportError::Unsupported {
            file: file.into(),
            path: path.into(),
            reason: "an empty name matches no program or thread".into(),
        });
    }
    if is_literal(pattern) {
        return Ok(());
    }
    let built = if is_path {
        crate::glob::path_glob(pattern)
    } else {
        crate::glob::name_glob(pattern)
    };
    built.map(|_| ()).map_err(|error| ImportError::Unsupported {
        file: file.into(),
        path: path.into(),
        reason: format!(
            "`{pattern}` is not a glob canopy can compile ({})",
            crate::glob::glob_error_reason(&error)
        ),
    })
}

fn quote(text: &str) -> String {
    toml::Value::String(text.into()).to_string()
}

fn parse_json(file: &str, text: &str) -> Result<serde_json::Map<String, Value>, ImportError> {
    let value: Value = serde_json::from_str(text).map_err(|error| ImportError::Json {
        file: file.into(),
        reason: error.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ImportError::Shape {
            file: file.into(),
            path: "(top level)".into(),
            expected: "expected an object".into(),
        }),
    }
}

fn mapping_toml(file: &str, text: &str, out: &mut String) -> Result<(), ImportError> {
    for (tag, attributes) in parse_json(file, text)? {
        let class = class_of(file, &tag, &Value::String(tag.clone()))?;
        let Value::Object(attributes) = attributes else {
            return Err(ImportError::Shape {
                file: file.into(),
                path: tag,
                expected: "expected an object of sched_attr fields".into(),
            });
        };
        out.push_str(&format!("\n[classes.{class}]\n"));
        for (field, value) in attributes {
            let path = format!("{tag}.{field}");
            let number = || {
                value.as_i64().ok_or_else(|| ImportError::Shape {
                    file: file.into(),
                    path: path.clone(),
                    expected: "expected an integer".into(),
                })
            };
            match field.as_str() {
                "sched_policy" => {
                    let policy =
                        match value.as_str() {
                            Some("SCHED_NORMAL" | "SCHED_OTHER") => "normal",
                            Some("SCHED_BATCH") => "batch",
                            Some("SCHED_IDLE") => "idle",
                            Some(other) => return Err(ImportError::Unsupported {
                                file: file.into(),
                                path,
                                reason: format!(
                                    "policy {other} is not a fair policy; canopy leaves RT/DL tasks alone"
                                ),
                            }),
                            None => {
                                return Err(ImportError::Shape {
                                    file: file.into(),
                                    path,
                                    expected: "expected a policy name".into(),
                                })
                            }
                        };
                    out.push_str(&format!("policy = \"{policy}\"\n"));
                }
                "sched_nice" => out.push_str(&format!("nice = {}\n", number()?)),
                "sched_runtime" => out.push_str(&format!("slice_us = {}\n", number()? / 1000)),
                "sched_util_min" => out.push_str(&format!("uclamp_min = {}\n", number()?)),
                "sched_util_max" => out.push_str(&format!("uclamp_max = {}\n", number()?)),
                "sched_priority" | "sched_deadline" | "sched_period" => {
                    out.push_str(&format!(
                        "# {field} = {} dropped: no effect on fair tasks\n",
                        value
                    ));
                }
                other => {
                    return Err(ImportError::Unsupported {
                        file: file.into(),
                        path,
                        reason: format!("unknown sched_attr field `{other}`"),
                    })
                }
            }
        }
    }
    Ok(())
}

struct App {
    file: String,
    key: String,
    class: Option<&'static str>,
    threads: Vec<(String, &'static str)>,
    dropped: Vec<String>,
}

fn parse_apps(file: &str, text: &str) -> Result<Vec<App>, ImportError> {
    let mut apps = Vec::new();
    for (key, config) in parse_json(file, text)? {
        let Value::Object(config) = config else {
            return Err(ImportError::Shape {
                file: file.into(),
                path: key,
                expected: "expected an object".into(),
            });
        };
        let mut app = App {
            file: file.into(),
            key: key.clone(),
            class: None,
            threads: Vec::new(),
            dropped: Vec::new(),
        };
        for (field, value) in config {
            let path = format!("{key}.{field}");
            match field.as_str() {
                "qos" => app.class = Some(class_of(file, &path, &value)?),
                "thread_qos" => {
                    let Value::Object(threads) = value else {
                        return Err(ImportError::Shape {
                            file: file.into(),
                            path,
                            expected: "expected an object of thread name to class".into(),
                        });
                    };
                    for (thread, class) in threads {
                        let thread_path = format!("{path}.{thread}");
                        let class = match &class {
                            Value::Array(items) => {
                                let mut last = None;
                                for item in items {
                                    last = Some(class_of(file, &thread_path, item)?);
                                }
                                last.ok_or_else(|| ImportError::Shape {
                                    file: file.into(),
                                    path: thread_path.clone(),
                                    expected: "expected at least one class".into(),
                                })?
                            }
                            other => class_of(file, &thread_path, other)?,
                        };
                        check_glob(file, &thread_path, &thread, false)?;
                        app.threads.push((thread, class));
                    }
                }
                "period" | "version" => app.dropped.push(format!("{field} = {value}")),
                other => {
                    return Err(ImportError::Unsupported {
                        file: file.into(),
                        path,
                        reason: format!("unknown app setting `{other}`"),
                    })
                }
            }
        }
        check_glob(file, &app.key, &app.key, app.key.contains('/'))?;
        if app.class.is_none() && app.threads.is_empty() {
            return Err(ImportError::Shape {
                file: file.into(),
                path: key,
                expected: "expected `qos` or `thread_qos`".into(),
            });
        }
        apps.push(app);
    }
    Ok(apps)
}

/// Converts a schedqos configuration to canopy TOML. `mappings` is `qos_mappings.json` if the
/// directory has one; `app_configs` are the `app_configs/*.json` files in the order to use.
pub fn import(
    mappings: Option<(&str, &str)>,
    app_configs: &[(&str, &str)],
) -> Result<String, ImportError> {
    let mut out = String::from(
        "# Converted from a schedqos configuration by `canopy import schedqos`.\n\
         # App keys match the program's basename (a full path when the key has a `/`): `exe`.\n\
         # Literal keys come before globs, as schedqos tries an exact match first.\n",
    );
    if let Some((file, text)) = mappings {
        mapping_toml(file, text, &mut out)?;
    }
    let mut apps = Vec::new();
    for (file, text) in app_configs {
        apps.extend(parse_apps(file, text)?);
    }
    let (literal, globs): (Vec<&App>, Vec<&App>) =
        apps.iter().partition(|app| is_literal(&app.key));
    for app in literal.into_iter().chain(globs) {
        // escaped: a TOML comment may hold no control character (a key with one, found by
        // the schedqos fuzz target, made the whole converted policy unreadable)
        out.push_str(&format!(
            "\n# {}: \"{}\"\n[[rules]]\n",
            app.file.escape_debug(),
            app.key.escape_debug()
        ));
        out.push_str(&format!(
            "name = {}\n",
            quote(&format!("schedqos:{}", app.key))
        ));
        out.push_str(&format!("exe = {}\n", quote(&app.key)));
        if let Some(class) = app.class {
            out.push_str(&format!("class = \"{class}\"\n"));
        }
        for dropped in &app.dropped {
            out.push_str(&format!("# dropped: {dropped} (no effect on fair tasks)\n"));
        }
        for (thread, class) in &app.threads {
            out.push_str(&format!(
                "[[rules.threads]]\nname = {}\nclass = \"{class}\"\n",
                quote(thread)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_class_is_an_error_not_default() {
        let error =
            import(None, &[("a.json", r#"{"make": {"qos": "QOS_BACKGRUND"}}"#)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.json: make.qos: unknown QoS class `QOS_BACKGRUND` (schedqos would silently use QOS_DEFAULT)"
        );
    }

    #[test]
    fn a_key_that_is_no_valid_glob_is_an_error_not_a_broken_policy() {
        let error = import(
            None,
            &[("a.json", r#"{"hackbe}ch": {"qos": "QOS_BACKGROUND"}}"#)],
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("a.json: hackbe}ch: `hackbe}ch` is not a glob canopy can compile"),
            "{error}"
        );
        let error = import(
            None,
            &[(
                "a.json",
                r#"{"app": {"thread_qos": {"t[": "QOS_UTILITY"}}}"#,
            )],
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("a.json: app.thread_qos.t[: "),
            "{error}"
        );
        let error = import(None, &[("a.json", r#"{"": {"qos": "QOS_BACKGROUND"}}"#)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.json: : an empty name matches no program or thread"
        );
    }

    #[test]
    fn a_key_with_a_control_character_still_converts_to_a_policy_that_compiles() {
        let toml = import(
            None,
            &[("a.json", r#"{"hack\bench": {"qos": "QOS_BACKGROUND"}}"#)],
        )
        .unwrap();
        assert!(toml.contains("# a.json: \"hack\\u{8}ench\"\n"), "{toml}");
        crate::compile_str("imported.toml", &toml).unwrap();
    }

    #[test]
    fn thread_qos_array_takes_the_last_class() {
        let toml = import(
            None,
            &[(
                "a.json",
                r#"{"app": {"thread_qos": {"t": ["QOS_UTILITY", "QOS_BACKGROUND"]}}}"#,
            )],
        )
        .unwrap();
        assert!(
            toml.contains("name = \"t\"\nclass = \"BACKGROUND\""),
            "{toml}"
        );
    }

    #[test]
    fn converted_policy_compiles() {
        let toml = import(
            Some(("qos_mappings.json", r#"{"QOS_UTILITY": {"sched_policy": "SCHED_BATCH", "sched_nice": 2, "sched_runtime": 16000000, "sched_util_max": 512}}"#)),
            &[("a.json", r#"{"c*": {"qos": "QOS_BACKGROUND"}, "cc1": {"qos": "QOS_BACKGROUND", "period": 16000000}}"#)],
        )
        .unwrap();
        let compiled = crate::compile_str("imported.toml", &toml).unwrap();
        // cc1 (literal) is emitted before c* (glob).
        assert_eq!(
            compiled.plan.rules()[0].conditions.exe.as_deref(),
            Some("cc1")
        );
    }
}
