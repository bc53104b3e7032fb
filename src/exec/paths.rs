//! Arguments that name files stay inside the tool's working directory.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why a path argument is refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("Argument `{field}` {why}; it must stay inside {}.", cwd.display())]
    Outside {
        field: String,
        why: Cow<'static, str>,
        cwd: PathBuf,
    },
    #[error("the tool's cwd {}: {source}", cwd.display())]
    Cwd {
        cwd: PathBuf,
        source: std::io::Error,
    },
}

/// Checks the arguments listed in `paths`: each, taken relative to `cwd`,
/// must resolve inside `cwd` with every symlink followed. The longest part
/// that exists is resolved by the kernel (`canonicalize`); the rest, not yet
/// created, may not climb with `..`. The check happens before the program
/// starts: a symlink someone swaps in afterwards is not caught, so confine
/// tools to trees that callers cannot write.
pub fn confine(cwd: &Path, paths: &[String], args: &Map<String, Value>) -> Result<(), PathError> {
    if paths.is_empty() {
        // The common case, on every command call: no file system access.
        return Ok(());
    }
    let escape = |field: &str, why: Cow<'static, str>| PathError::Outside {
        field: field.to_string(),
        why,
        cwd: cwd.to_path_buf(),
    };
    let root = cwd.canonicalize().map_err(|source| PathError::Cwd {
        cwd: cwd.to_path_buf(),
        source,
    })?;
    for name in paths {
        let Some(Value::String(value)) = args.get(name) else {
            continue;
        };
        let wanted = cwd.join(value);
        // The longest existing ancestor decides; below it are only plain names
        // (`file_name` is never `..`), which cannot climb out.
        let mut existing = wanted.as_path();
        let resolved = loop {
            match existing.canonicalize() {
                Ok(p) => break p,
                // It is there but does not resolve: a dangling symlink.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && existing.symlink_metadata().is_ok() =>
                {
                    return Err(escape(name, "is a link that does not resolve".into()))
                }
                // Not there yet: its parent decides.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match (existing.parent(), existing.file_name()) {
                        (Some(parent), Some(_)) => existing = parent,
                        // `..` at the end, or nothing left that exists.
                        _ => return Err(escape(name, "does not resolve to a path".into())),
                    }
                }
                // Too long, a loop, no permission, a file used as a
                // directory: what lies below cannot be checked, so the
                // path is refused (walking up past it once let a symlink
                // out of cwd through).
                Err(e) => return Err(escape(name, format!("cannot be resolved ({e})").into())),
            }
        };
        if !resolved.starts_with(&root) {
            return Err(escape(name, "leads outside the tool's directory".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_stay_inside_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("in")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
        let args = |v: &str| json!({ "p": v }).as_object().unwrap().clone();
        let check = |v: &str| confine(&root, &["p".to_string()], &args(v));
        for inside in [
            "",
            ".",
            "sub",
            "sub/../sub",
            "in",
            "in/new-file",
            "new/deeper",
            "./sub/",
        ] {
            assert!(check(inside).is_ok(), "{inside}");
        }
        for outside in [
            "..",
            "../root/../..",
            "/etc",
            "out",
            "out/passwd",
            "sub/../../x",
            "in/../../x",
            "dangling",
            "missing/..",
        ] {
            let e = check(outside).unwrap_err();
            assert!(matches!(e, PathError::Outside { .. }), "{outside}: {e}");
        }
        // Absolute paths inside the root are fine.
        assert!(check(root.join("sub").to_str().unwrap()).is_ok());
        // Arguments not listed are not paths.
        assert!(confine(&root, &[], &args("/etc")).is_ok());
    }

    /// Longer than PATH_MAX, so `canonicalize` fails with ENAMETOOLONG: the
    /// check once walked up to an ancestor that resolved inside cwd, and
    /// `mkdir -p` then made a directory through the symlink at the end.
    #[test]
    fn a_path_too_long_to_resolve_is_refused() {
        use nix::fcntl::{open, openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let name = "d".repeat(200);
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let mut fd = open(&root, flags, Mode::empty()).unwrap();
        for _ in 0..22 {
            mkdirat(&fd, name.as_str(), Mode::S_IRWXU).unwrap();
            fd = openat(&fd, name.as_str(), flags, Mode::empty()).unwrap();
        }
        nix::unistd::symlinkat("/tmp", &fd, "out").unwrap();
        let deep = vec![name.as_str(); 22].join("/");
        let args = |v: &str| json!({ "p": v }).as_object().unwrap().clone();
        for value in [format!("{deep}/out/new"), format!("{deep}/new")] {
            let e = confine(&root, &["p".to_string()], &args(&value)).unwrap_err();
            assert!(e.to_string().contains("cannot be resolved"), "{e}");
        }
        // Looping links are refused the same way, not walked past.
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let e = confine(&root, &["p".to_string()], &args("loop/x")).unwrap_err();
        assert!(e.to_string().contains("cannot be resolved"), "{e}");
    }
}
