//! Parsing one source: TOML text → the typed items of `model.rs`, each with its span. Items are
//! deserialized one at a time (one class, one rule, one group, one state), and inside an item a
//! bad field is reported and removed before retrying, so one run reports every unknown field and
//! wrong type instead of stopping at the first.

use serde::de::DeserializeOwned;
use toml::de::DeTable;
use toml::de::DeValue;
use toml::de::ValueDeserializer;
use toml::Spanned;

use crate::diagnostic::did_you_mean;
use crate::diagnostic::FileId;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::diagnostic::Span;
use crate::model::ClassDef;
use crate::model::DaemonDef;
use crate::model::DefaultsDef;
use crate::model::GroupDef;
use crate::model::RuleDef;
use crate::model::StateDef;

/// The sections a policy file may have.
pub(crate) const SECTIONS: [&str; 5] = ["defaults", "daemon", "classes", "rules", "groups"];

/// A named item with the span of its name.
#[derive(Debug, Clone)]
pub(crate) struct Named<T> {
    pub(crate) name: String,
    pub(crate) span: Span,
    pub(crate) item: T,
}

/// Everything one file defines, in source order.
#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    pub(crate) defaults: Option<(DefaultsDef, Span)>,
    pub(crate) daemon: Option<(DaemonDef, Span)>,
    pub(crate) classes: Vec<Named<ClassDef>>,
    /// Rules with their span and whether a bad field was dropped while reading them.
    pub(crate) rules: Vec<(RuleDef, Span, bool)>,
    pub(crate) groups: Vec<Named<GroupDef>>,
    /// Name spans of each group's states, parallel to `groups`.
    pub(crate) state_spans: Vec<Vec<(String, Span)>>,
}

/// Parses `text` (source `file`); problems go to `reporter`. Returns what could be read.
pub(crate) fn parse_file(file: FileId, text: &str, reporter: &mut Reporter<'_>) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(error) => {
            let range = error.span().unwrap_or(0..0);
            reporter.error(
                &Span::new(file, range),
                Problem::Syntax {
                    message: first_line(error.message()),
                },
                None,
            );
            return parsed;
        }
    };
    let span = |range: std::ops::Range<usize>| Span::new(file, range);
    let line_starts: Vec<usize> = text.match_indices('\n').map(|(i, _)| i).collect();
    let line_of = |offset: usize| line_starts.partition_point(|&newline| newline < offset) + 1;
    for (key, value) in root.get_ref().iter() {
        let key_span = span(key.span());
        match key.get_ref().as_ref() {
            "defaults" => {
                parsed.defaults = deserialize_item(file, value, "[defaults]", None, reporter)
                    .map(|item| (item, key_span));
            }
            "daemon" => {
                parsed.daemon = deserialize_item(file, value, "[daemon]", None, reporter)
                    .map(|item| (item, key_span));
            }
            "classes" => {
                for (name, value) in table_entries(file, value, "[classes]", reporter) {
                    let label = format!("class `{}`", name.get_ref());
                    if let Some(item) = deserialize_item(file, value, &label, None, reporter) {
                        parsed.classes.push(Named {
                            name: name.get_ref().to_string(),
                            span: span(name.span()),
                            item,
                        });
                    }
                }
            }
            "rules" => {
                let Some(array) = value.get_ref().as_array() else {
                    reporter.error(
                        &span(value.span()),
                        Problem::WrongType {
                            message: format!(
                                "expected an array of tables, found {}",
                                value.get_ref().type_str()
                            ),
                            item: "`rules`".into(),
                        },
                        Some("write each rule as a `[[rules]]` table".into()),
                    );
                    continue;
                };
                for value in array.iter() {
                    let label = format!("rule at line {}", line_of(value.span().start));
                    let mut damaged = false;
                    if let Some(item) =
                        deserialize_item_flagged(file, value, &label, None, reporter, &mut damaged)
                    {
                        parsed.rules.push((item, span(value.span()), damaged));
                    }
                }
            }
            "groups" => {
                for (name, value) in table_entries(file, value, "[groups]", reporter) {
                    let label = format!("group `{}`", name.get_ref());
                    let (group, states) =
                        parse_group(file, name.get_ref(), value, &label, reporter);
                    if let Some(group) = group {
                        parsed.groups.push(Named {
                            name: name.get_ref().to_string(),
                            span: span(name.span()),
                            item: group,
                        });
                        parsed.state_spans.push(states);
                    }
                }
            }
            other => reporter.error(
                &key_span,
                Problem::UnknownSection { name: other.into() },
                did_you_mean(other, SECTIONS)
                    .or_else(|| Some(format!("sections are: {}", SECTIONS.join(", ")))),
            ),
        }
    }
    parsed
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}

fn table_entries<'v, 'i>(
    file: FileId,
    value: &'v Spanned<DeValue<'i>>,
    label: &str,
    reporter: &mut Reporter<'_>,
) -> Vec<(
    &'v Spanned<std::borrow::Cow<'i, str>>,
    &'v Spanned<DeValue<'i>>,
)> {
    match value.get_ref().as_table() {
        Some(table) => table.iter().collect(),
        None => {
            reporter.error(
                &Span::new(file, value.span()),
                Problem::WrongType {
                    message: format!("expected a table, found {}", value.get_ref().type_str()),
                    item: label.into(),
                },
                None,
            );
            Vec::new()
        }
    }
}

/// A group's states are deserialized one by one so that an unknown field in a state is reported
/// as a state overriding an unknown field.
fn parse_group(
    file: FileId,
    group_name: &str,
    value: &Spanned<DeValue<'_>>,
    label: &str,
    reporter: &mut Reporter<'_>,
) -> (Option<GroupDef>, Vec<(String, Span)>) {
    let Some(table) = value.get_ref().as_table() else {
        return (
            deserialize_item(file, value, label, None, reporter),
            Vec::new(),
        );
    };
    let mut without_states = table.clone();
    without_states.remove("states");
    let base = Spanned::new(value.span(), DeValue::Table(without_states));
    let group: Option<GroupDef> = deserialize_item(file, &base, label, None, reporter);
    let mut state_spans = Vec::new();
    let mut states = indexmap::IndexMap::new();
    if let Some(states_value) = table.get("states") {
        let states_label = format!("states of group `{group_name}`");
        for (name, value) in table_entries(file, states_value, &states_label, reporter) {
            let state_label = format!("state `{}` of group `{group_name}`", name.get_ref());
            let state: Option<StateDef> =
                deserialize_item(file, value, &state_label, Some(name.get_ref()), reporter);
            if let Some(state) = state {
                state_spans.push((name.get_ref().to_string(), Span::new(file, name.span())));
                states.insert(name.get_ref().to_string(), state);
            }
        }
    }
    (
        group.map(|mut group| {
            group.states = states;
            group
        }),
        state_spans,
    )
}

/// Deserializes one item, reporting every bad field: on an error the offending key is removed
/// and the item deserialized again, at most once per key.
fn deserialize_item<T: DeserializeOwned>(
    file: FileId,
    value: &Spanned<DeValue<'_>>,
    label: &str,
    state: Option<&str>,
    reporter: &mut Reporter<'_>,
) -> Option<T> {
    deserialize_item_flagged(file, value, label, state, reporter, &mut false)
}

/// `deserialize_item`, also saying (in `damaged`) whether a bad field was dropped.
fn deserialize_item_flagged<T: DeserializeOwned>(
    file: FileId,
    value: &Spanned<DeValue<'_>>,
    label: &str,
    state: Option<&str>,
    reporter: &mut Reporter<'_>,
    damaged: &mut bool,
) -> Option<T> {
    let Some(table) = value.get_ref().as_table() else {
        reporter.error(
            &Span::new(file, value.span()),
            Problem::WrongType {
                message: format!("expected a table, found {}", value.get_ref().type_str()),
                item: label.into(),
            },
            None,
        );
        return None;
    };
    let mut table: DeTable<'_> = table.clone();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..=table.len() + 1 {
        let candidate = Spanned::new(value.span(), DeValue::Table(table.clone()));
        let error = match T::deserialize(ValueDeserializer::from(candidate)) {
            Ok(item) => return Some(item),
            Err(error) => error,
        };
        let message = first_line(error.message());
        let error_span = error.span().unwrap_or(value.span());
        if let Some(field) = backticked_after(&message, "missing field `") {
            if !removed.contains(&field) {
                reporter.error(
                    &Span::new(file, value.span()),
                    Problem::MissingField {
                        field,
                        item: label.into(),
                    },
                    None,
                );
            }
            return None;
        }
        if let Some(field) = backticked_after(&message, "unknown field `") {
            let expected = expected_fields(&message);
            let hint = did_you_mean(&field, expected.iter().map(String::as_str)).or_else(|| {
                (!expected.is_empty()).then(|| format!("expected one of: {}", expected.join(", ")))
            });
            let problem = match state {
                Some(state) => Problem::StateUnknownField {
                    state: state.into(),
                    field,
                },
                None => Problem::UnknownField {
                    field,
                    item: label.into(),
                },
            };
            reporter.error(&Span::new(file, error_span.clone()), problem, hint);
        } else {
            reporter.error(
                &Span::new(file, error_span.clone()),
                Problem::WrongType {
                    message,
                    item: label.into(),
                },
                None,
            );
        }
        let culprit = table
            .iter()
            .find(|(key, value)| {
                contains(&key.span(), error_span.start) || contains(&value.span(), error_span.start)
            })
            .map(|(key, _)| key.get_ref().to_string());
        let culprit = culprit?;
        table.remove(culprit.as_str());
        removed.push(culprit);
        *damaged = true;
    }
    None
}

fn contains(range: &std::ops::Range<usize>, offset: usize) -> bool {
    range.start <= offset && offset < range.end.max(range.start + 1)
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_string())
}

/// The field names listed after `expected one of` / `expected` in a serde message.
fn expected_fields(message: &str) -> Vec<String> {
    let Some((_, tail)) = message.split_once("expected") else {
        return Vec::new();
    };
    tail.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Source;

    fn parse(text: &str) -> (ParsedFile, Vec<String>) {
        let sources = [Source::new("p.toml", text)];
        let mut reporter = Reporter::new(&sources);
        let parsed = parse_file(0, text, &mut reporter);
        let messages = reporter
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        (parsed, messages)
    }

    #[test]
    fn reports_every_unknown_field_of_one_item() {
        let (parsed, messages) =
            parse("[[rules]]\ncomm = \"make\"\nclas = \"BACKGROUND\"\nfoo = 1\n");
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].starts_with("p.toml:3:1: error: unknown field `clas`"),
            "{messages:?}"
        );
        assert!(messages[0].contains("did you mean `class`?"));
        assert!(messages[1].starts_with("p.toml:4:1: error: unknown field `foo`"));
        assert_eq!(parsed.rules.len(), 1);
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let (_, messages) = parse("[groups.a]\npath = \"a\"\nweight = \"heavy\"\n");
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].starts_with("p.toml:3:10: error: invalid type"),
            "{messages:?}"
        );
    }

    #[test]
    fn syntax_error_has_a_location() {
        let (_, messages) = parse("[rules\n");
        assert_eq!(messages.len(), 1);
        assert!(messages[0].starts_with("p.toml:1:"), "{messages:?}");
        assert!(messages[0].contains("invalid TOML"));
    }
}
