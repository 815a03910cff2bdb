//! Finding and reading policy files: the binary's side of the pure compiler. A directory means
//! `DIR/policy.toml` then `DIR/policy.d/*.toml` in lexical order; a file means itself. Every read
//! is bounded (size, count) and every failure names the path, so bad input gives a clear error
//! quickly instead of a hang or an out-of-memory.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;
use canopy_policy::Source;

/// Default policy directory.
pub(crate) const DEFAULT_POLICY_DIR: &str = "/etc/canopy";

/// Largest policy file read (a policy is a few kilobytes; this is far beyond any real one).
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most drop-ins read from one `policy.d`.
pub(crate) const MAX_DROP_INS: usize = 1024;

/// All sources named by `paths` (the default directory when empty), in merge order.
pub(crate) fn load_sources(paths: &[PathBuf]) -> Result<Vec<Source>> {
    let default = [PathBuf::from(DEFAULT_POLICY_DIR)];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut sources = Vec::new();
    for path in paths {
        for file in policy_files(path)? {
            sources.push(read_source(&file)?);
        }
    }
    Ok(sources)
}

/// The files a path stands for, in merge order.
pub(crate) fn policy_files(path: &Path) -> Result<Vec<PathBuf>> {
    let metadata = fs::metadata(path)
        .with_context(|| format!("cannot access policy path {}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let main = path.join("policy.toml");
    if main.exists() {
        files.push(main);
    }
    let drop_in_dir = path.join("policy.d");
    if drop_in_dir.is_dir() {
        let mut drop_ins = Vec::new();
        let entries = fs::read_dir(&drop_in_dir)
            .with_context(|| format!("cannot list {}", drop_in_dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", drop_in_dir.display()))?;
            let name = entry.file_name();
            if Path::new(&name)
                .extension()
                .is_some_and(|ext| ext == "toml")
            {
                drop_ins.push(entry.path());
                if drop_ins.len() > MAX_DROP_INS {
                    bail!(
                        "{} has more than {MAX_DROP_INS} drop-in files; refusing to load so many (merge them into fewer files)",
                        drop_in_dir.display()
                    );
                }
            }
        }
        drop_ins.sort();
        files.extend(drop_ins);
    }
    if files.is_empty() {
        bail!(
            "{} has neither policy.toml nor policy.d/*.toml",
            path.display()
        );
    }
    Ok(files)
}

/// Reads one policy file: a regular file of at most `MAX_FILE_BYTES` of UTF-8.
pub(crate) fn read_source(path: &Path) -> Result<Source> {
    let text = read_bounded_text(path, MAX_FILE_BYTES)?;
    Ok(Source::new(path.display().to_string(), text))
}

/// Reads a regular UTF-8 file of at most `limit` bytes, with clear errors otherwise.
pub(crate) fn read_bounded_text(path: &Path, limit: u64) -> Result<String> {
    let metadata =
        fs::metadata(path).with_context(|| format!("cannot access {}", path.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if metadata.len() > limit {
        bail!(
            "{} is {} bytes; policy files larger than {} MiB are refused",
            path.display(),
            metadata.len(),
            limit / (1024 * 1024)
        );
    }
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{} grew beyond {} MiB while being read",
            path.display(),
            limit / (1024 * 1024)
        );
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(error) => {
            let offset = error.utf8_error().valid_up_to();
            let prefix = &error.as_bytes()[..offset];
            let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            bail!(
                "{}:{line}:{column}: error: invalid UTF-8 (byte offset {offset}); policy files must be UTF-8",
                path.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_means_main_file_then_sorted_drop_ins() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("policy.toml"), "").unwrap();
        fs::create_dir(dir.path().join("policy.d")).unwrap();
        for name in ["20-b.toml", "10-a.toml", "README"] {
            fs::write(dir.path().join("policy.d").join(name), "").unwrap();
        }
        let files = policy_files(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["policy.toml", "10-a.toml", "20-b.toml"]);
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        fs::write(&path, b"a = 1\nb = \"\xff\"\n").unwrap();
        let error = read_bounded_text(&path, 100).unwrap_err().to_string();
        assert!(
            error.ends_with(
                "bad.toml:2:6: error: invalid UTF-8 (byte offset 11); policy files must be UTF-8"
            ),
            "{error}"
        );
    }

    #[test]
    fn oversized_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        fs::write(&path, vec![b'#'; 2048]).unwrap();
        let error = read_bounded_text(&path, 1024).unwrap_err().to_string();
        assert!(error.contains("2048 bytes"), "{error}");
    }
}
