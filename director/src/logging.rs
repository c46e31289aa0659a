//! Logs through `tracing`: a level filter in `RUST_LOG` syntax (from
//! `--log-level`, else `RUST_LOG`, else [`DEFAULT_FILTER`]), written to
//! stderr as text or as one JSON object per line.

use tracing_subscriber::EnvFilter;

/// The filter without `--log-level` or `RUST_LOG`: the director's own
/// events at info; openraft's internal logs off (they log every vote and,
/// while a peer is down, every heartbeat round; `--log-level
/// info,openraft=info` shows them).
pub const DEFAULT_FILTER: &str = "info,openraft=off";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human text.
    Text,
    /// One JSON object per line.
    Json,
}

/// A `--log-level` that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("--log-level {given:?}: {source}")]
pub struct BadFilter {
    /// What was given.
    pub given: String,
    /// Why it does not parse.
    pub source: tracing_subscriber::filter::ParseError,
}

/// Installs the global subscriber.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), BadFilter> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|source| BadFilter {
            given: l.to_string(),
            source,
        })?,
        None => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}
