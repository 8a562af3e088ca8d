//! Diagnostics a person reads: `path:line:col: error: message` and a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a file, located to the line and column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// The file, as given by the user.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, where we can say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at byte `offset` of `source`.
    pub fn at(
        path: &Path,
        source: &str,
        offset: usize,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        let (line, col) = line_col(source, offset);
        Self {
            path: path.to_path_buf(),
            line,
            col,
            message: message.into(),
            hint,
        }
    }

    /// A diagnostic at the start of `span` of `source`.
    pub fn span(
        path: &Path,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        Self::at(path, source, span.start, message, hint)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = source[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Several diagnostics, displayed one per paragraph.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let src = "a = 1\nname = \"予算\" x\n";
        let offset = src.find('x').expect("x present");
        assert_eq!(line_col(src, offset), (2, 13));
        assert_eq!(line_col(src, 0), (1, 1));
    }
}
