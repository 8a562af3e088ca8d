//! Human durations ("3s", "10m", "1h30m", "2d") as used in workflow files and the config.

use std::fmt;

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty duration")]
    Empty,
    /// Not a number and a unit.
    #[error("invalid duration `{text}`: {reason}")]
    Invalid {
        /// What was written.
        text: String,
        /// What humantime says about it.
        reason: String,
    },
}

/// A parsed, non-negative duration that remembers how it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    /// Parses a duration such as `"30s"`, `"10m"`, `"1h30m"` or `"2d"`.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DurationError::Empty);
        }
        humantime::parse_duration(trimmed)
            .map(HumanDuration)
            .map_err(|e| DurationError::Invalid {
                text: text.to_string(),
                reason: e.to_string(),
            })
    }

    /// As a chrono duration (saturating).
    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The hint shown with a bad duration.
pub const DURATION_HINT: &str =
    "write a number and a unit, e.g. \"500ms\", \"30s\", \"10m\", \"1h30m\", \"2d\"";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_common_forms() {
        assert_eq!(
            HumanDuration::parse("3s"),
            Ok(HumanDuration(Duration::from_secs(3)))
        );
        assert_eq!(
            HumanDuration::parse("10m"),
            Ok(HumanDuration(Duration::from_secs(600)))
        );
        assert_eq!(
            HumanDuration::parse("1h30m"),
            Ok(HumanDuration(Duration::from_secs(5400)))
        );
        assert_eq!(
            HumanDuration::parse("2d"),
            Ok(HumanDuration(Duration::from_secs(172_800)))
        );
        assert_eq!(
            HumanDuration::parse("250ms"),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(HumanDuration::parse("").is_err());
        assert!(HumanDuration::parse("3 parsecs").is_err());
        assert!(HumanDuration::parse("-3s").is_err());
        assert!(HumanDuration::parse("s").is_err());
    }
}
