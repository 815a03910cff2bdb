//! Glob helpers: how canopy builds globs for names and for paths, whether a pattern is a plain
//! literal (so it can be hashed instead of matched), and a conservative analysis of whether two
//! cgroup path globs can match one path, or one can match an ancestor of the other's paths.
//! "Conservative" means: overlap is reported when it is certain or nearly so (identical globs,
//! one glob matching the other's literal text, segment-wise compatible literal prefixes and
//! suffixes); exotic character-class intersections are not reasoned about.

use globset::Glob;
use globset::GlobBuilder;
use globset::GlobMatcher;

/// Characters that make a pattern a glob rather than a literal.
const META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// Whether `pattern` has no glob syntax and so matches exactly itself.
pub(crate) fn is_literal(pattern: &str) -> bool {
    !pattern
        .bytes()
        .any(|byte| matches!(byte, b'*' | b'?' | b'[' | b']' | b'{' | b'}' | b'\\'))
}

/// Compiles a glob on a name (comm, thread name, exe basename): `*` matches anything.
pub(crate) fn name_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
}

/// Compiles a glob on a path (cgroup path, full exe path): `*` stops at `/`, `**` crosses it.
pub(crate) fn path_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// The reason a glob doesn't compile, without globset's repetition of the pattern.
pub(crate) fn glob_error_reason(error: &globset::Error) -> String {
    error.kind().to_string()
}

fn matcher(pattern: &str, path: bool) -> Option<GlobMatcher> {
    let glob = if path {
        path_glob(pattern)
    } else {
        name_glob(pattern)
    };
    glob.ok().map(|glob| glob.compile_matcher())
}

/// Whether every string `narrow` matches is also matched by `broad`, as far as can be told
/// cheaply: identical patterns, `broad` matching the literal `narrow`, or `broad` being `*`/`**`.
#[cfg(test)]
pub(crate) fn covers(broad: &str, narrow: &str, path: bool) -> bool {
    if broad == narrow || broad == "**" || (!path && broad == "*") {
        return true;
    }
    if is_literal(narrow) {
        return matcher(broad, path).is_some_and(|m| m.is_match(narrow));
    }
    false
}

fn literal_prefix(segment: &str) -> &str {
    &segment[..segment.find(META).unwrap_or(segment.len())]
}

fn literal_suffix(segment: &str) -> &str {
    match segment.rfind(META) {
        Some(index) => &segment[index + 1..],
        None => segment,
    }
}

/// Whether the single-segment glob `pattern` matches the literal `value`.
fn segment_matches(pattern: &str, value: &str) -> bool {
    if pattern.contains(['?', '[', ']', '{', '}', '\\']) {
        return matcher(pattern, false).is_some_and(|m| m.is_match(value));
    }
    let pieces: Vec<Box<str>> = pattern.split('*').map(Into::into).collect();
    wildcard_match(&pieces, value)
}

/// Whether two single path segments (no `/`) can match one string.
pub(crate) fn segments_intersect(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (is_literal(a), is_literal(b)) {
        (true, true) => false,
        (true, false) => segment_matches(b, a),
        (false, true) => segment_matches(a, b),
        (false, false) => {
            let (pa, pb) = (literal_prefix(a), literal_prefix(b));
            let (sa, sb) = (literal_suffix(a), literal_suffix(b));
            (pa.starts_with(pb) || pb.starts_with(pa)) && (sa.ends_with(sb) || sb.ends_with(sa))
        }
    }
}

fn segments(pattern: &str) -> Vec<&str> {
    pattern.trim_matches('/').split('/').collect()
}

/// Whether two cgroup path globs can match one cgroup path.
#[cfg(test)]
pub(crate) fn paths_overlap(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if a.contains("**") || b.contains("**") {
        return covers(a, b, true) || covers(b, a, true);
    }
    let (sa, sb) = (segments(a), segments(b));
    sa.len() == sb.len() && sa.iter().zip(&sb).all(|(x, y)| segments_intersect(x, y))
}

/// Whether some path matched by `ancestor` can be a proper ancestor of a path matched by
/// `descendant` (the ancestor glob matches a prefix of the descendant's segments).
pub(crate) fn path_may_contain(ancestor: &str, descendant: &str) -> bool {
    if ancestor.contains("**") || descendant.contains("**") {
        return false;
    }
    let (sa, sd) = (segments(ancestor), segments(descendant));
    sa.len() < sd.len() && sa.iter().zip(&sd).all(|(x, y)| segments_intersect(x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_detected() {
        assert!(is_literal("make"));
        assert!(is_literal("system.slice/sshd.service"));
        assert!(!is_literal("cc1*"));
        assert!(!is_literal("app-{a,b}"));
    }

    #[test]
    fn covers_handles_identity_wildcards_and_literals() {
        assert!(covers("*", "anything*", false));
        assert!(covers("cc*", "cc1", false));
        assert!(!covers("cc*", "gcc", false));
        assert!(!covers("cc*", "c*", false));
        assert!(covers("system.slice/*", "system.slice/a.service", true));
        assert!(!covers("system.slice/*", "system.slice/a/b", true));
    }

    #[test]
    fn overlap_is_segment_wise() {
        assert!(paths_overlap("tenants/*", "tenants/acme"));
        assert!(paths_overlap("tenants/*", "tenants/a*"));
        assert!(paths_overlap("system.slice/*.service", "system.slice/ssh*"));
        assert!(!paths_overlap(
            "system.slice/*.service",
            "system.slice/*.scope"
        ));
        assert!(!paths_overlap("tenants/*", "tenants/*/jobs"));
        assert!(!paths_overlap("a/*", "b/*"));
    }

    #[test]
    fn ancestry_compares_prefix_segments() {
        assert!(path_may_contain("tenants/*", "tenants/acme/jobs"));
        assert!(!path_may_contain("tenants/*", "system.slice/x"));
        assert!(!path_may_contain("tenants/acme", "tenants/acme"));
    }
}

/// A compiled glob. Patterns made only of literal text and single `*` (the vast majority) are
/// matched by a small wildcard matcher without building a regex; anything else (`?`, `[...]`,
/// `{a,b}`, `**`, escapes) uses globset's compiled regex.
#[derive(Debug, Clone)]
pub(crate) enum FastGlob {
    /// Per `/`-separated segment (one segment for name globs), the literal pieces between `*`s.
    Simple {
        segments: Vec<Vec<Box<str>>>,
        path: bool,
    },
    /// Anything globset supports.
    Regex(GlobMatcher),
}

impl FastGlob {
    /// Compiles `pattern` (already validated as `glob`) for name or path matching.
    pub(crate) fn new(pattern: &str, glob: &Glob, path: bool) -> Self {
        let simple = !pattern.contains(['?', '[', ']', '{', '}', '\\']) && !pattern.contains("**");
        if !simple {
            return FastGlob::Regex(glob.compile_matcher());
        }
        let split = |segment: &str| {
            segment
                .split('*')
                .map(Into::into)
                .collect::<Vec<Box<str>>>()
        };
        let segments = if path {
            pattern.split('/').map(split).collect()
        } else {
            vec![split(pattern)]
        };
        FastGlob::Simple { segments, path }
    }

    /// Whether `value` matches.
    pub(crate) fn is_match(&self, value: &str) -> bool {
        match self {
            FastGlob::Regex(matcher) => matcher.is_match(value),
            FastGlob::Simple {
                segments,
                path: false,
            } => wildcard_match(&segments[0], value),
            FastGlob::Simple {
                segments,
                path: true,
            } => {
                let mut values = value.split('/');
                for segment in segments {
                    match values.next() {
                        Some(part) if wildcard_match(segment, part) => {}
                        _ => return false,
                    }
                }
                values.next().is_none()
            }
        }
    }
}

/// Matches `value` against literal `pieces` separated by `*` (pieces.len() - 1 stars).
fn wildcard_match(pieces: &[Box<str>], value: &str) -> bool {
    let (first, rest) = match pieces.split_first() {
        Some(split) => split,
        None => return value.is_empty(),
    };
    if rest.is_empty() {
        return value == &**first;
    }
    let Some(mut remaining) = value.strip_prefix(&**first) else {
        return false;
    };
    let (last, middle) = rest.split_last().expect("rest is not empty");
    for piece in middle {
        match remaining.find(&**piece) {
            Some(position) => remaining = &remaining[position + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(&**last)
}

/// An index of many globs over one kind of string, answering "which globs match this value"
/// in time that grows with the number of globs sharing the value's literal prefixes, not with
/// the number of globs: each glob is filed under its literal prefix (the text before its first
/// wildcard), and only globs whose prefix the value starts with are run. Globs that begin with
/// a wildcard are always run.
#[derive(Debug, Clone, Default)]
pub(crate) struct GlobIndex {
    matchers: Vec<FastGlob>,
    by_prefix: std::collections::HashMap<Box<str>, Vec<u32>>,
    prefix_lengths: Vec<usize>,
    always: Vec<u32>,
}

impl GlobIndex {
    /// Adds a glob (its id is the number of globs added before it).
    pub(crate) fn add(&mut self, pattern: &str, glob: &Glob, path: bool) -> usize {
        let id = self.matchers.len();
        self.matchers.push(FastGlob::new(pattern, glob, path));
        let prefix = literal_prefix(pattern);
        if prefix.is_empty() {
            self.always.push(id as u32);
        } else {
            self.by_prefix
                .entry(prefix.into())
                .or_default()
                .push(id as u32);
            if let Err(position) = self.prefix_lengths.binary_search(&prefix.len()) {
                self.prefix_lengths.insert(position, prefix.len());
            }
        }
        id
    }

    /// Whether no glob was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// How many globs start with a wildcard (and so are run on every lookup).
    pub(crate) fn unprefixed_count(&self) -> usize {
        self.always.len()
    }

    /// Ids of the globs matching `value`, ascending, into `out` (cleared first).
    pub(crate) fn matches_into(&self, value: &str, out: &mut Vec<usize>) {
        out.clear();
        for &length in &self.prefix_lengths {
            if length > value.len() {
                break;
            }
            if !value.is_char_boundary(length) {
                continue;
            }
            if let Some(ids) = self.by_prefix.get(&value[..length]) {
                out.extend(
                    ids.iter()
                        .map(|&id| id as usize)
                        .filter(|&id| self.matchers[id].is_match(value)),
                );
            }
        }
        out.extend(
            self.always
                .iter()
                .map(|&id| id as usize)
                .filter(|&id| self.matchers[id].is_match(value)),
        );
        out.sort_unstable();
    }

    /// The lowest id of a glob matching `value`.
    pub(crate) fn first_match(&self, value: &str) -> Option<usize> {
        let mut out = Vec::new();
        self.matches_into(value, &mut out);
        out.first().copied()
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn fast_glob_agrees_with_globset() {
        let cases = [
            ("cc1*", false, ["cc1", "cc1plus", "gcc", "cc"]),
            ("*make*", false, ["make", "cmake", "mak", "gmake-4"]),
            ("a*b*c", false, ["abc", "aXbYc", "abcb", "acb"]),
            (
                "app-*.scope",
                true,
                [
                    "app-x.scope",
                    "app-a/b.scope",
                    "app-.scope",
                    "x/app-1.scope",
                ],
            ),
            (
                "user.slice/user-*.slice/*",
                true,
                [
                    "user.slice/user-1.slice/x",
                    "user.slice/user-1.slice",
                    "user.slice/user-1.slice/x/y",
                    "user.slice/u.slice/x",
                ],
            ),
            (
                "system.slice/*.service",
                true,
                [
                    "system.slice/a.service",
                    "system.slice/.service",
                    "system.slice/a/b.service",
                    "system.slice/a.service/x",
                ],
            ),
        ];
        for (pattern, path, values) in cases {
            let glob = if path {
                path_glob(pattern)
            } else {
                name_glob(pattern)
            }
            .unwrap();
            let fast = FastGlob::new(pattern, &glob, path);
            assert!(matches!(fast, FastGlob::Simple { .. }));
            let reference = glob.compile_matcher();
            for value in values {
                assert_eq!(
                    fast.is_match(value),
                    reference.is_match(value),
                    "{pattern} vs {value}"
                );
            }
        }
    }

    #[test]
    fn glob_index_finds_every_matching_glob_in_order() {
        let mut index = GlobIndex::default();
        for pattern in [
            "tenants/*",
            "*.service",
            "tenants/acme",
            "system.slice/*.service",
            "ten*",
        ] {
            index.add(pattern, &path_glob(pattern).unwrap(), true);
        }
        let mut out = Vec::new();
        index.matches_into("tenants/acme", &mut out);
        assert_eq!(out, [0, 2], "`ten*` does not cross `/`");
        index.matches_into("system.slice/a.service", &mut out);
        assert_eq!(out, [3]);
        index.matches_into("x.service", &mut out);
        assert_eq!(out, [1]);
        assert_eq!(index.first_match("nothing"), None);
    }
}
