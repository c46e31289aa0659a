//! Problems found in an input file, each with where it is: the one shape of
//! error every file director reads reports (configuration, IPVS documents).

use std::fmt;
use std::path::Path;

use serde_saphyr::Spanned;

/// One problem in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line (0: unknown).
    pub line: u32,
    /// 1-based column (0: unknown).
    pub column: u32,
    /// The field, as a path (`services[1].ports[0].port`); empty for syntax.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.column, self.field, self.message
            )
        }
    }
}

/// The problems found so far in one file.
#[derive(Debug, Default)]
pub struct Problems {
    /// In the order found.
    pub list: Vec<Problem>,
}

impl Problems {
    /// A problem at the node `s` came from.
    pub fn at<T>(&mut self, s: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(at(s, field, message));
    }

    /// A field missing from the whole document (reported at its start).
    pub fn missing(&mut self, field: impl Into<String>) {
        self.list.push(Problem {
            line: 1,
            column: 1,
            field: field.into(),
            message: "missing".into(),
        });
    }
}

/// `v` as a `T`, or a problem saying it is out of `range` (as text).
pub fn int_in<T: TryFrom<i64>>(
    v: &Spanned<i64>,
    field: impl Into<String>,
    range: &str,
    problems: &mut Problems,
) -> Option<T> {
    match T::try_from(v.value) {
        Ok(x) => Some(x),
        Err(_) => {
            problems.at(v, field, format!("{} is out of range {range}", v.value));
            None
        }
    }
}

/// A problem at the node `s` came from.
pub fn at<T>(s: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
        field: field.into(),
        message: message.into(),
    }
}

/// The full parser's options for `text`: its limits raised to the text's
/// size. A file of tens of thousands of services has more YAML nodes than
/// the default budget allows; no document has more nodes than bytes, nor
/// more events than twice as many.
pub fn sized_for(text: &str) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(text.len().saturating_mul(2) + 16);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// A YAML/JSON syntax or shape error.
pub fn from_saphyr(e: &serde_saphyr::Error) -> Problem {
    let (line, column) = e
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    Problem {
        line,
        column,
        field: String::new(),
        message: e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_string(),
    }
}

/// Every problem as `FILE:LINE:COLUMN: FIELD: PROBLEM`, one per line.
pub fn report(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{p}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}
