//! The workflows directory is a boundary: every file read through it (workflows, data,
//! templates, 様式, attachments, calendars) resolves inside it. A name must be a relative path
//! without `..`, and the file it names — after every symbolic link is followed — must lie
//! inside the directory: a link to `/etc/shadow` is refused, a link to another file of the
//! directory is fine. `validate` and the daemon use these same functions, so they agree.

use std::path::{Component, Path, PathBuf};

/// Why a file is not read.
#[derive(Debug, thiserror::Error)]
pub enum Outside {
    /// An absolute name, or one with `..`.
    #[error("`{0}` must be a relative path inside the workflows directory (no `..`, not absolute)")]
    NotRelative(String),
    /// A file whose real location (links followed) is outside the directory.
    #[error("{} is a symbolic link to {}, outside the workflows directory: refused", .path.display(), .target.display())]
    Link {
        /// The file as named.
        path: PathBuf,
        /// Where it really is.
        target: PathBuf,
    },
    /// The file (or the directory) cannot be resolved.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file as named.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Outside {
    /// Whether the file simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Outside::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// `rel` under `base` (itself inside `root`), checked: a relative name without `..`, whose
/// real location is inside `root`. Returns the path to read.
pub fn resolve(root: &Path, base: &Path, rel: &str) -> Result<PathBuf, Outside> {
    let name = Path::new(rel);
    if rel.is_empty()
        || name.is_absolute()
        || name
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Outside::NotRelative(rel.to_string()));
    }
    check(root, &base.join(name))
}

/// `path` (found in a listing of a directory inside `root`), checked: its real location is
/// inside `root`. Returns `path`.
pub fn check(root: &Path, path: &Path) -> Result<PathBuf, Outside> {
    // The parent of a bare file name (`x.toml`) is the empty path: the current directory.
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    let io = |source| Outside::Io {
        path: path.to_path_buf(),
        source,
    };
    let real_root = std::fs::canonicalize(root).map_err(io)?;
    let target = std::fs::canonicalize(path).map_err(io)?;
    if target.starts_with(&real_root) {
        Ok(path.to_path_buf())
    } else {
        Err(Outside::Link {
            path: path.to_path_buf(),
            target,
        })
    }
}

/// The first of `bases` (each inside `root`) under which `rel` names a file: `Ok(None)` when
/// none has it, an error when the name or a file found is not inside `root`.
pub fn find(root: &Path, bases: &[PathBuf], rel: &str) -> Result<Option<PathBuf>, Outside> {
    for base in bases {
        match resolve(root, base, rel) {
            Ok(p) if p.is_file() => return Ok(Some(p)),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Reads `path` as text after [`check`].
pub fn read_to_string(root: &Path, path: &Path) -> Result<String, Outside> {
    let path = check(root, path)?;
    std::fs::read_to_string(&path).map_err(|source| Outside::Io { path, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_resolve_inside_and_links_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workflows");
        std::fs::create_dir_all(root.join("templates")).unwrap();
        std::fs::write(root.join("templates/a.txt"), "a").unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "s").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&secret, root.join("templates/out.txt")).unwrap();
            std::os::unix::fs::symlink(root.join("templates/a.txt"), root.join("in.txt")).unwrap();
        }
        assert!(resolve(&root, &root, "templates/a.txt").is_ok());
        assert!(matches!(
            resolve(&root, &root, "../secret.txt"),
            Err(Outside::NotRelative(_))
        ));
        assert!(matches!(
            resolve(&root, &root, secret.to_str().unwrap()),
            Err(Outside::NotRelative(_))
        ));
        #[cfg(unix)]
        {
            let e = resolve(&root, &root, "templates/out.txt").unwrap_err();
            assert!(
                e.to_string().contains("outside the workflows directory"),
                "{e}"
            );
            assert!(
                resolve(&root, &root, "in.txt").is_ok(),
                "a link inside is fine"
            );
        }
        assert!(
            resolve(&root, &root, "missing.txt")
                .unwrap_err()
                .is_not_found()
        );
    }
}
