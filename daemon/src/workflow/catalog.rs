//! Loading a workflows directory: every `*.toml` at the top is a workflow, `data/*.toml` is
//! reference data. Loading never fails as a whole: a broken file becomes diagnostics and the
//! other workflows still load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use super::{Workflow, compile, raw::toml_to_json};
use crate::diag::Diagnostic;

/// The calendar's directory inside the workflows directory.
pub const CALENDAR_DIR: &str = "calendar";

/// A loaded workflows directory.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The directory.
    pub dir: PathBuf,
    /// Valid workflows by id.
    pub workflows: BTreeMap<String, Arc<Workflow>>,
    /// Source text by workflow id (what gets stored as the version).
    pub sources: BTreeMap<String, Arc<str>>,
    /// Reference data, `{ stem: table }`.
    pub data: Arc<Json>,
    /// The business calendar (`calendar/` inside the directory).
    pub calendar: Arc<crate::calendar::Calendar>,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
    /// Workflow files looked at (valid or not).
    pub files: Vec<PathBuf>,
}

impl Catalog {
    /// Loads `dir`. An unreadable directory is a diagnostic, not a panic.
    pub fn load(dir: &Path) -> Catalog {
        let mut catalog = Catalog {
            dir: dir.to_path_buf(),
            ..Catalog::default()
        };
        let (data, mut diags) = load_data(&dir.join("data"));
        catalog.diagnostics.append(&mut diags);
        let data_names = data_names(&data);
        catalog.data = Arc::new(data);
        match crate::calendar::Calendar::load(&dir.join(CALENDAR_DIR)) {
            Ok(cal) => catalog.calendar = Arc::new(cal),
            Err(mut diags) => catalog.diagnostics.append(&mut diags),
        }

        let files = match toml_files(dir) {
            Ok(files) => files,
            Err(e) => {
                catalog.diagnostics.push(io_diag(dir, &e));
                return catalog;
            }
        };
        let mut first_path: BTreeMap<String, PathBuf> = BTreeMap::new();
        for path in files {
            catalog.files.push(path.clone());
            let source = match crate::inside::read_to_string(dir, &path) {
                Ok(s) => s,
                Err(e) => {
                    catalog.diagnostics.push(outside_diag(&path, &e));
                    continue;
                }
            };
            match compile(&path, &source, &data_names) {
                Ok(wf) => {
                    if let Some(first) = first_path.get(&wf.id) {
                        let offset = id_offset(&source);
                        catalog.diagnostics.push(Diagnostic::at(
                            &path,
                            &source,
                            offset,
                            format!("duplicate workflow id `{}`", wf.id),
                            Some(format!("`{}` already uses this id", first.display())),
                        ));
                        continue;
                    }
                    first_path.insert(wf.id.clone(), path.clone());
                    catalog.sources.insert(wf.id.clone(), Arc::from(source));
                    catalog.workflows.insert(wf.id.clone(), Arc::new(wf));
                }
                Err(mut diags) => catalog.diagnostics.append(&mut diags),
            }
        }
        catalog
    }

    /// Loads `dir` again after a change. Where a file that held a valid workflow is now broken,
    /// the last good version stays (and the problem is reported); the same for a broken data file
    /// or calendar file. Removed files are gone.
    pub fn reload(dir: &Path, previous: &Catalog) -> Catalog {
        let mut next = Catalog::load(dir);
        let broken: BTreeSet<PathBuf> = next.diagnostics.iter().map(|d| d.path.clone()).collect();
        for (id, wf) in &previous.workflows {
            if broken.contains(&wf.path) && !next.workflows.contains_key(id) && wf.path.exists() {
                tracing::warn!(workflow = %id, file = %wf.path.display(), "file is invalid; the last good version stays active");
                next.workflows.insert(id.clone(), wf.clone());
                if let Some(src) = previous.sources.get(id) {
                    next.sources.insert(id.clone(), src.clone());
                }
            }
        }
        let data_dir = dir.join("data");
        if let (Some(prev), Some(cur)) = (previous.data.as_object(), next.data.as_object()) {
            let mut merged = cur.clone();
            for (stem, value) in prev {
                let file = data_dir.join(format!("{stem}.toml"));
                if broken.contains(&file) && !merged.contains_key(stem) {
                    merged.insert(stem.clone(), value.clone());
                }
            }
            next.data = Arc::new(Json::Object(merged));
        }
        let cal_dir = dir.join(CALENDAR_DIR);
        if broken.iter().any(|p| p.starts_with(&cal_dir)) {
            next.calendar = previous.calendar.clone();
        }
        next
    }

    /// Loads one file, with reference data from the `data/` directory beside it.
    pub fn load_file(path: &Path) -> Result<(Workflow, String), Vec<Diagnostic>> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let (data, diags) = load_data(&dir.join("data"));
        let source =
            crate::inside::read_to_string(dir, path).map_err(|e| vec![outside_diag(path, &e)])?;
        let wf = compile(path, &source, &data_names(&data)).map_err(|mut d| {
            d.extend(diags);
            d
        })?;
        Ok((wf, source))
    }

    /// The names usable as `data.<stem>`.
    pub fn data_names(&self) -> BTreeSet<String> {
        data_names(&self.data)
    }
}

fn data_names(data: &Json) -> BTreeSet<String> {
    data.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn io_diag(path: &Path, err: &std::io::Error) -> Diagnostic {
    Diagnostic {
        path: path.to_path_buf(),
        line: 1,
        col: 1,
        message: format!("cannot read: {err}"),
        hint: None,
    }
}

/// Byte offset of the `id` value, for diagnostics about the id of an otherwise valid file.
fn id_offset(source: &str) -> usize {
    toml::from_str::<super::raw::RawWorkflow>(source)
        .map(|raw| raw.id.span().start)
        .unwrap_or(0)
}

/// A file that cannot be read, or is not inside the workflows directory.
fn outside_diag(path: &Path, err: &crate::inside::Outside) -> Diagnostic {
    Diagnostic {
        path: path.to_path_buf(),
        line: 1,
        col: 1,
        message: match err {
            crate::inside::Outside::Io { source, .. } => format!("cannot read: {source}"),
            other => other.to_string(),
        },
        hint: matches!(err, crate::inside::Outside::Link { .. })
            .then(|| "copy the file into the workflows directory instead of linking it".into()),
    }
}

/// The `*.toml` entries directly in `dir` (files, and links whichever way they point: reading
/// one says why it cannot be used), sorted; subdirectories are not entries.
fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.') || n.starts_with('#'));
        if !hidden && path.extension().is_some_and(|e| e == "toml") && !entry.file_type()?.is_dir()
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads `data/*.toml` into `{ stem: table }`. A missing directory is no data, not an error.
pub fn load_data(dir: &Path) -> (Json, Vec<Diagnostic>) {
    let mut map = serde_json::Map::new();
    let mut diags = Vec::new();
    let files = match toml_files(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            diags.push(io_diag(dir, &e));
            Vec::new()
        }
    };
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let source = match crate::inside::read_to_string(dir.parent().unwrap_or(dir), &path) {
            Ok(s) => s,
            Err(e) => {
                diags.push(outside_diag(&path, &e));
                continue;
            }
        };
        let valid_stem = stem
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && stem
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_stem {
            diags.push(Diagnostic::at(
                &path,
                &source,
                0,
                format!("data file name `{stem}` cannot be used as `data.{stem}`"),
                Some(
                    "name data files with lowercase letters, digits and '_' (e.g. people.toml)"
                        .into(),
                ),
            ));
            continue;
        }
        match toml::from_str::<toml::Table>(&source) {
            Ok(table) => {
                map.insert(stem, toml_to_json(&toml::Value::Table(table)));
            }
            Err(err) => {
                let offset = err.span().map(|s| s.start).unwrap_or(0);
                diags.push(Diagnostic::at(
                    &path,
                    &source,
                    offset,
                    err.message().trim().replace('\n', "; "),
                    None,
                ));
            }
        }
    }
    (Json::Object(map), diags)
}
