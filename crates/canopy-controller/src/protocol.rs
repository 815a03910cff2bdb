//! The control API's wire format: one JSON object per line each way. Requests are documented
//! serde types that refuse unknown fields; anything malformed or larger than
//! [`MAX_REQUEST_BYTES`] gets an error reply and changes nothing.

use serde::{Deserialize, Serialize};

/// Largest request line accepted, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A control request: `{"cmd": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Switch a cgroup's group to a named state (`base` = no state).
    State {
        /// cgroup path, relative to the cgroup2 root or absolute under it.
        cgroup: String,
        /// State name from the policy.
        state: String,
    },
    /// Override the class of one thread (`tid`) or every thread of a process (`pid`).
    Tag {
        /// Process id (all threads).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// Thread id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tid: Option<u32>,
        /// Class name.
        class: String,
    },
    /// Explain a process's (or thread's) class: rule, group, state, requested/effective, why.
    Explain {
        /// Process or thread id.
        pid: u32,
    },
    /// The status snapshot (as JSON).
    Status {},
    /// Prometheus text.
    Metrics {},
    /// Re-read and recompile the policy.
    Reload {},
}

/// A reply: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// The result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failure with a message.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }

    /// The reply as one line (with the newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"unserializable reply"}"#.into());
        s.push('\n');
        s
    }
}

/// Why a request line was rejected before it reached the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    /// Not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
    /// Not a valid request object; carries serde's message.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A cgroup path with `..`, `.`, NUL or outside the cgroup2 root.
    #[error("invalid cgroup path {0:?}")]
    BadCgroup(String),
    /// `tag` needs exactly one of `pid` and `tid`.
    #[error("tag needs exactly one of pid and tid")]
    TagTarget,
}

/// Parses one request line (without or with its trailing newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ProtocolError::TooLarge);
    }
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    let req: Request = serde_json::from_str(text.trim_end_matches(['\n', '\r']))
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if let Request::Tag { pid, tid, .. } = &req {
        if pid.is_some() == tid.is_some() {
            return Err(ProtocolError::TagTarget);
        }
    }
    Ok(req)
}

/// Normalizes a cgroup path to the form the controller uses: relative to the cgroup2 root, no
/// leading or trailing `/`. Accepts an absolute path under `cgroup_root`.
pub fn normalize_cgroup(path: &str, cgroup_root: &str) -> Result<String, ProtocolError> {
    let bad = || ProtocolError::BadCgroup(path.to_string());
    let root = cgroup_root.trim_end_matches('/');
    let rel = match path.strip_prefix(root) {
        Some(rest) if !root.is_empty() && (rest.is_empty() || rest.starts_with('/')) => rest,
        _ => path,
    };
    let rel = rel.trim_matches('/');
    if rel.contains('\0') {
        return Err(bad());
    }
    for comp in rel.split('/') {
        if rel.is_empty() {
            break;
        }
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(bad());
        }
    }
    Ok(rel.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse_request(br#"{"cmd":"state","cgroup":"a/b","state":"minimized"}"#).unwrap(),
            Request::State {
                cgroup: "a/b".into(),
                state: "minimized".into()
            }
        );
        assert_eq!(
            parse_request(b"{\"cmd\":\"tag\",\"pid\":5,\"class\":\"BACKGROUND\"}\n").unwrap(),
            Request::Tag {
                pid: Some(5),
                tid: None,
                class: "BACKGROUND".into()
            }
        );
        assert_eq!(
            parse_request(br#"{"cmd":"explain","pid":1}"#).unwrap(),
            Request::Explain { pid: 1 }
        );
        assert_eq!(
            parse_request(br#"{"cmd":"status"}"#).unwrap(),
            Request::Status {}
        );
        assert_eq!(
            parse_request(br#"{"cmd":"metrics"}"#).unwrap(),
            Request::Metrics {}
        );
        assert_eq!(
            parse_request(br#"{"cmd":"reload"}"#).unwrap(),
            Request::Reload {}
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"cmd\":\"status\",\"extra\":1}",
            b"{\"cmd\":\"nope\"}",
            b"{\"cmd\":\"explain\",\"pid\":-1}",
            b"{\"cmd\":\"explain\",\"pid\":\"1\"}",
            b"{\"cmd\":\"tag\",\"class\":\"X\"}",
            b"{\"cmd\":\"tag\",\"pid\":1,\"tid\":2,\"class\":\"X\"}",
            b"\xff\xfe",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(parse_request(&huge), Err(ProtocolError::TooLarge));
    }

    #[test]
    fn cgroup_paths() {
        let root = "/sys/fs/cgroup";
        assert_eq!(
            normalize_cgroup("/sys/fs/cgroup/a/b/", root).unwrap(),
            "a/b"
        );
        assert_eq!(normalize_cgroup("a/b", root).unwrap(), "a/b");
        assert_eq!(normalize_cgroup("/a/b", root).unwrap(), "a/b");
        assert!(normalize_cgroup("a/../b", root).is_err());
        assert!(normalize_cgroup("a//b", root).is_err());
        assert!(normalize_cgroup("/sys/fs/cgroupx/a", root).unwrap() == "sys/fs/cgroupx/a");
    }

    #[test]
    fn replies_are_single_lines() {
        let line = Response::error("a\nb").to_line();
        assert_eq!(line.matches('\n').count(), 1);
        let back: Response = serde_json::from_str(&line).unwrap();
        assert!(!back.ok);
    }
}
