//! Logs through `tracing`: a level filter in `RUST_LOG` syntax (from
//! `--log-level`, else `RUST_LOG`, else `info`), written to stderr as text
//! or as one JSON object per line.

use tracing_subscriber::EnvFilter;

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
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
