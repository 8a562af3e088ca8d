//! `Failure`: what could not be done (a message), why (an underlying error), or both — the
//! message first, the error as its `source`, so that the whole cause chain can be printed.

/// A failure with a message, an underlying error, or both.
#[derive(Debug)]
pub struct Failure {
    message: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    /// A failure with no underlying error.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            source: None,
        }
    }

    /// `message`, caused by `source`.
    pub fn caused(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: Some(message.into()),
            source: Some(source.into()),
        }
    }

    /// The failure `source` describes itself (its causes follow it).
    pub fn of(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            message: None,
            source: Some(source.into()),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.message, &self.source) {
            (Some(m), _) => f.write_str(m),
            (None, Some(e)) => e.fmt(f),
            (None, None) => f.write_str("failed"),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let source: &(dyn std::error::Error + 'static) = self.source.as_deref()?;
        if self.message.is_some() {
            Some(source)
        } else {
            source.source()
        }
    }
}

/// `error: …` and one `caused by: …` line per cause, as the daemon and the CLI print errors.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut text = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_printed_once_per_cause() {
        let io = std::io::Error::other("disk full");
        assert_eq!(
            report(&Failure::caused("cannot write a.txt", io)),
            "error: cannot write a.txt\n  caused by: disk full"
        );
        let inner = Failure::caused("database error", std::io::Error::other("locked"));
        assert_eq!(
            report(&Failure::of(inner)),
            "error: database error\n  caused by: locked"
        );
        assert_eq!(report(&Failure::new("no run r1")), "error: no run r1");
    }
}
