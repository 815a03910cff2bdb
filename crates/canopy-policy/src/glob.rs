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
    !pattern.contains(META)
}

/// Compiles a glob on a name (comm, thread name, exe basename): `*` matches anything.
pub(crate) fn name_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(false).backslash_escape(true).build()
}

/// Compiles a glob on a path (cgroup path, full exe path): `*` stops at `/`, `**` crosses it.
pub(crate) fn path_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).backslash_escape(true).build()
}

/// The reason a glob doesn't compile, without globset's repetition of the pattern.
pub(crate) fn glob_error_reason(error: &globset::Error) -> String {
    error.kind().to_string()
}

fn matcher(pattern: &str, path: bool) -> Option<GlobMatcher> {
    let glob = if path { path_glob(pattern) } else { name_glob(pattern) };
    glob.ok().map(|glob| glob.compile_matcher())
}

/// Whether every string `narrow` matches is also matched by `broad`, as far as can be told
/// cheaply: identical patterns, `broad` matching the literal `narrow`, or `broad` being `*`/`**`.
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

/// Whether two single path segments (no `/`) can match one string.
fn segments_intersect(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (is_literal(a), is_literal(b)) {
        (true, true) => false,
        (true, false) => matcher(b, false).is_some_and(|m| m.is_match(a)),
        (false, true) => matcher(a, false).is_some_and(|m| m.is_match(b)),
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
pub(crate) fn paths_overlap(a: &str, b: &str) -> bool {
    if a == b || covers(a, b, true) || covers(b, a, true) {
        return true;
    }
    if a.contains("**") || b.contains("**") {
        return false;
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
        assert!(!paths_overlap("system.slice/*.service", "system.slice/*.scope"));
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
