//! A quick reader for the plain subset of YAML that table documents and
//! configuration files are written in: what `director ipvs show -o
//! yaml|json` prints, flow style (`- {protocol: tcp, address: ...}`) and
//! hand-written block style. It keeps no positions; it allocates the values
//! it hands to serde and, per mapping, the list of its keys (to refuse a
//! key written twice).
//!
//! It accepts a document only when it can be sure the full YAML parser
//! (`serde_saphyr`) reads it the same way. On anything else (anchors, tags,
//! block scalars, escapes in quoted strings, multi-line plain scalars, tabs,
//! integers that are not plain decimals, null values, ...) it gives up with
//! [`Outside`], and the caller reads the document again with the full parser,
//! which also finds the line and column of every problem. The same goes for
//! values of the wrong shape: any error here only means "read it again".
//!
//! Accepted:
//! - block mappings (`key: value`, keys of letters, digits, `_` and `-`) and
//!   block sequences (`- item`, also at the indentation of their key, and
//!   `- key: value` starting a mapping), comments, blank lines;
//! - flow mappings and sequences (`{k: v, ...}`, `[a, ...]`) over several
//!   lines, more indented than the line they start on, with plain or quoted
//!   keys (JSON is flow style);
//! - scalars: plain ones of letters, digits, `.`, `_` and `-` (and `:` not
//!   followed by a space, in block style: IPv6 addresses), and single- or
//!   double-quoted ones on one line without escapes. A plain scalar is an
//!   integer only as plain decimal digits; `null`, `~` and empty values are
//!   left to the full parser.
//!
//! Two modes. [`read`] reads only what the schema asks for by type (table
//! documents): a value of unknown type is outside. [`read_typed_by_yaml`]
//! also answers serde's "any" requests (what `serde_saphyr::Spanned`,
//! untagged enums and flattened fields make) the way the full parser types
//! a plain scalar (YAML's core schema, with its 1.1 booleans): `true` and
//! `false` are booleans, plain decimals integers, and any other scalar that
//! the full parser could read as a boolean, a number or null (`yes`, `on`,
//! `1.5`, `0x1f`, `1_000`, `.inf`, `1:20`, ...) is outside; the rest are
//! strings. A value read this way carries no position (`Location::UNKNOWN`
//! inside a `Spanned`).

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The document is outside the subset this reader is sure about (or not of
/// the shape asked for): read it with the full parser.
#[derive(Debug)]
pub struct Outside;

impl std::fmt::Display for Outside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outside the quick YAML subset")
    }
}

impl std::error::Error for Outside {}

impl de::Error for Outside {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Outside
    }
}

type Result<T> = std::result::Result<T, Outside>;

/// The deepest nesting read (the full parser allows 64).
const MAX_DEPTH: usize = 32;
/// The longest key read (the full parser looks 1024 characters ahead for a
/// key's colon; every key of the schema is short).
const MAX_KEY: usize = 64;

/// Reads one document with `seed`, by the types the schema asks for.
pub fn read<'de, S: DeserializeSeed<'de>>(text: &'de str, seed: S) -> Result<S::Value> {
    read_in(text, seed, false)
}

/// Reads one document as `T`, answering requests for a value of any type
/// as the full parser would (see the module's documentation).
pub fn read_typed_by_yaml<'de, T: de::Deserialize<'de>>(text: &'de str) -> Result<T> {
    read_in(text, std::marker::PhantomData::<T>, true)
}

fn read_in<'de, S: DeserializeSeed<'de>>(text: &'de str, seed: S, guess: bool) -> Result<S::Value> {
    let mut r = Reader {
        text,
        b: text.as_bytes(),
        pos: 0,
        line_start: 0,
        depth: 0,
        guess,
    };
    // Tabs, carriage returns, other control characters and anything beyond
    // ASCII (a byte-order mark, Unicode line breaks) are the full parser's
    // business.
    if !text
        .bytes()
        .all(|c| c == b'\n' || (b' '..=b'~').contains(&c))
    {
        return Err(Outside);
    }
    r.skip_to_content()?;
    let start = r.top()?;
    let value = seed.deserialize(Node { r: &mut r, start })?;
    // Whatever follows the root node is the full parser's business too.
    if r.pos < r.b.len() {
        return Err(Outside);
    }
    Ok(value)
}

struct Reader<'de> {
    text: &'de str,
    b: &'de [u8],
    pos: usize,
    line_start: usize,
    depth: usize,
    /// Whether requests for any type are answered (`read_typed_by_yaml`).
    guess: bool,
}

/// A scalar as written.
#[derive(Clone, Copy)]
struct Scalar<'de> {
    text: &'de str,
    plain: bool,
}

/// What a node turned out to be, its start consumed.
enum Start<'de> {
    /// A scalar (in block style, the rest of its line is consumed too).
    Scalar(Scalar<'de>),
    /// A block mapping whose keys are at column `indent`; the reader is on
    /// its first key.
    BlockMap { indent: usize },
    /// A block sequence whose dashes are at column `indent`; the reader is on
    /// its first dash.
    BlockSeq { indent: usize },
    /// A flow mapping (`{` consumed); its lines are indented at least `min`;
    /// `block` says it is a value in block style (the rest of the line after
    /// its `}` is consumed with it).
    FlowMap { min: usize, block: bool },
    /// A flow sequence, likewise.
    FlowSeq { min: usize, block: bool },
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_plain_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/')
}

impl<'de> Reader<'de> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.pos + ahead).copied()
    }

    fn column(&self) -> usize {
        self.pos - self.line_start
    }

    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    /// A space, a line end or the end of the text at `ahead`.
    fn separator_at(&self, ahead: usize) -> bool {
        matches!(self.peek_at(ahead), None | Some(b' ' | b'\n'))
    }

    fn skip_spaces(&mut self) -> Result<()> {
        while let Some(c) = self.peek() {
            match c {
                b' ' => self.pos += 1,
                b'\t' | b'\r' => return Err(Outside),
                _ => break,
            }
        }
        Ok(())
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'\n' {
                break;
            }
            self.pos += 1;
        }
    }

    fn newline(&mut self) {
        self.pos += 1;
        self.line_start = self.pos;
    }

    /// From the end of a line's content: past blank and comment lines, onto
    /// the first character of the next content line (or the end).
    fn skip_to_content(&mut self) -> Result<()> {
        loop {
            self.skip_spaces()?;
            match self.peek() {
                None => return Ok(()),
                Some(b'#') => self.skip_comment(),
                Some(b'\n') => self.newline(),
                Some(_) => return Ok(()),
            }
        }
    }

    /// The rest of a block line after its value: spaces, perhaps a comment,
    /// the line end; then on to the next content line.
    fn end_block_line(&mut self) -> Result<()> {
        let before = self.pos;
        self.skip_spaces()?;
        match self.peek() {
            None | Some(b'\n') => {}
            Some(b'#') if self.pos > before => self.skip_comment(),
            Some(_) => return Err(Outside),
        }
        self.skip_to_content()
    }

    /// Spaces, line ends and comments inside a flow collection; every line
    /// with content there must be indented at least `min`.
    fn skip_flow_space(&mut self, min: usize) -> Result<()> {
        let mut after_space = self.pos == self.line_start;
        loop {
            match self.peek() {
                Some(b' ') => {
                    self.pos += 1;
                    after_space = true;
                }
                Some(b'\n') => {
                    self.newline();
                    after_space = true;
                }
                Some(b'#') if after_space => self.skip_comment(),
                Some(b'\t' | b'\r') => return Err(Outside),
                None => return Err(Outside),
                Some(_) => {
                    if self.column() < min {
                        return Err(Outside);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A key that starts a block mapping entry here: `key:` and then a
    /// space or the line end.
    fn key_here(&self) -> bool {
        let rest = &self.b[self.pos..];
        let len = rest.iter().take_while(|c| is_key_char(**c)).count();
        len > 0
            && len <= MAX_KEY
            && rest[0].is_ascii_alphabetic()
            && rest.get(len) == Some(&b':')
            && matches!(rest.get(len + 1), None | Some(b' ' | b'\n'))
    }

    /// A dash that starts a block sequence entry here.
    fn dash_here(&self) -> bool {
        self.peek() == Some(b'-') && self.separator_at(1)
    }

    /// A block mapping key (`key_here` was true): the key, with its colon
    /// consumed.
    fn block_key(&mut self) -> &'de str {
        let start = self.pos;
        while self.peek().is_some_and(is_key_char) {
            self.pos += 1;
        }
        let key = &self.text[start..self.pos];
        self.pos += 1; // the colon
        key
    }

    /// A quoted scalar on one line without escapes (the quote not consumed).
    fn quoted(&mut self) -> Result<&'de str> {
        let quote = self.b[self.pos];
        let start = self.pos + 1;
        let len = self.b[start..]
            .iter()
            .position(|c| *c == quote || *c == b'\n' || *c == b'\\' && quote == b'"')
            .ok_or(Outside)?;
        let end = start + len;
        if self.b[end] != quote || self.b.get(end + 1) == Some(&quote) {
            // A line break, an escape, or '' inside single quotes.
            return Err(Outside);
        }
        self.pos = end + 1;
        Ok(&self.text[start..end])
    }

    /// A plain scalar; in block style it may hold colons not followed by a
    /// space (`fd10::21`).
    fn plain(&mut self, block: bool) -> Result<&'de str> {
        let first = self.peek().ok_or(Outside)?;
        let starts_well = first.is_ascii_alphanumeric()
            || first == b'/'
            || first == b'-' && self.peek_at(1).is_some_and(|c| c.is_ascii_digit());
        if !starts_well {
            return Err(Outside);
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if is_plain_char(c) || block && c == b':' && !self.separator_at(1) {
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(&self.text[start..self.pos])
    }

    /// The root node (the reader on its first character).
    fn top(&mut self) -> Result<Start<'de>> {
        if self.at_end() {
            return Err(Outside);
        }
        let indent = self.column();
        match self.b[self.pos] {
            b'{' => {
                self.pos += 1;
                Ok(Start::FlowMap {
                    min: 0,
                    block: true,
                })
            }
            b'[' => {
                self.pos += 1;
                Ok(Start::FlowSeq {
                    min: 0,
                    block: true,
                })
            }
            _ if self.dash_here() => Ok(Start::BlockSeq { indent }),
            _ if self.key_here() => Ok(Start::BlockMap { indent }),
            _ => Err(Outside),
        }
    }

    /// A value in block style. The reader stands just after the indicator
    /// that introduced it: the colon of a key at column `owner`, or (with
    /// `dash`) the dash of a sequence entry at column `owner`.
    fn block_value(&mut self, owner: usize, dash: bool) -> Result<Start<'de>> {
        self.skip_spaces()?;
        match self.peek() {
            None | Some(b'\n' | b'#') => {
                if self.peek() == Some(b'#') {
                    self.skip_comment();
                }
                // The value is on the next lines: a sequence (a mapping's
                // may sit at the mapping's own indentation) or a mapping.
                self.skip_to_content()?;
                if self.at_end() {
                    return Err(Outside);
                }
                let indent = self.column();
                if self.dash_here() && (indent > owner || indent == owner && !dash) {
                    Ok(Start::BlockSeq { indent })
                } else if indent > owner && self.key_here() {
                    Ok(Start::BlockMap { indent })
                } else {
                    // A null, or something the full parser should judge.
                    Err(Outside)
                }
            }
            Some(b'{') => {
                self.pos += 1;
                Ok(Start::FlowMap {
                    min: owner + 1,
                    block: true,
                })
            }
            Some(b'[') => {
                self.pos += 1;
                Ok(Start::FlowSeq {
                    min: owner + 1,
                    block: true,
                })
            }
            Some(b'"' | b'\'') => {
                let text = self.quoted()?;
                self.end_block_line()?;
                Ok(Start::Scalar(Scalar { text, plain: false }))
            }
            Some(_) if dash && self.key_here() => Ok(Start::BlockMap {
                indent: self.column(),
            }),
            Some(_) => {
                let text = self.plain(true)?;
                if !self.separator_at(0) {
                    return Err(Outside);
                }
                self.end_block_line()?;
                Ok(Start::Scalar(Scalar { text, plain: true }))
            }
        }
    }

    /// A value inside a flow collection whose lines are indented at least
    /// `min`; the reader is on its first character.
    fn flow_value(&mut self, min: usize) -> Result<Start<'de>> {
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                Ok(Start::FlowMap { min, block: false })
            }
            Some(b'[') => {
                self.pos += 1;
                Ok(Start::FlowSeq { min, block: false })
            }
            Some(b'"' | b'\'') => Ok(Start::Scalar(Scalar {
                text: self.quoted()?,
                plain: false,
            })),
            _ => {
                let text = self.plain(false)?;
                if !matches!(self.peek(), Some(b' ' | b'\n' | b',' | b']' | b'}')) {
                    return Err(Outside);
                }
                Ok(Start::Scalar(Scalar { text, plain: true }))
            }
        }
    }

    /// To the next entry of a flow collection closed by `close` (past the
    /// comma after the previous one, unless `first`): true when there is
    /// one, false when the collection ended (its bracket consumed). A
    /// trailing comma is the full parser's.
    fn flow_entry(&mut self, min: usize, first: bool, close: u8, block: bool) -> Result<bool> {
        self.skip_flow_space(min)?;
        if !first {
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_flow_space(min)?;
                    if self.peek() == Some(close) {
                        return Err(Outside);
                    }
                }
                Some(c) if c == close => {}
                _ => return Err(Outside),
            }
        }
        if self.peek() == Some(close) {
            self.pos += 1;
            self.close_flow(block)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// After a flow collection's closing bracket.
    fn close_flow(&mut self, block: bool) -> Result<()> {
        self.depth = self.depth.saturating_sub(1);
        if block {
            self.end_block_line()
        } else {
            Ok(())
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Outside);
        }
        Ok(())
    }
}

/// A plain scalar YAML reads as null.
fn nullish(s: Scalar<'_>) -> bool {
    s.plain && matches!(s.text, "" | "~" | "null" | "Null" | "NULL")
}

/// A plain decimal integer (no sign but `-`, no leading zeros, no `_`, no
/// other radix: those the full parser reads).
fn decimal(s: Scalar<'_>) -> Result<i64> {
    if !s.plain {
        return Err(Outside);
    }
    let digits = s.text.strip_prefix('-').unwrap_or(s.text);
    let well_formed = !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return Err(Outside);
    }
    s.text.parse().map_err(|_| Outside)
}

/// A plain scalar the full parser types as something other than a string
/// or a plain decimal: a boolean other than `true`/`false` (YAML 1.1's
/// `yes`, `On`, `n`, ...), a float, an integer in another notation or with
/// `_`, a sexagesimal number, a null.
fn typed_otherwise(text: &str) -> bool {
    const BOOLS: [&str; 10] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    if BOOLS.iter().any(|b| text.eq_ignore_ascii_case(b)) {
        return true;
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let numeric = |c: u8| c.is_ascii_digit() || matches!(c, b'_' | b':' | b'.');
    let radix = digits
        .get(..2)
        .is_some_and(|p| ["0x", "0o", "0b"].iter().any(|r| p.eq_ignore_ascii_case(r)));
    text.parse::<f64>().is_ok()
        || digits.starts_with('.')
        || radix
        || digits.starts_with(|c: char| c.is_ascii_digit()) && text.contains('_')
        || digits.bytes().all(numeric) && digits.bytes().filter(|c| *c == b'.').count() <= 1
}

/// A scalar as the full parser types it when nothing says what to expect:
/// `true`/`false`, a plain decimal, or a string; outside when it would be
/// anything else.
fn visit_typed<'de, V: Visitor<'de>>(s: Scalar<'de>, visitor: V) -> Result<V::Value> {
    if !s.plain {
        return visitor.visit_borrowed_str(s.text);
    }
    match s.text {
        "true" => return visitor.visit_bool(true),
        "false" => return visitor.visit_bool(false),
        _ => {}
    }
    if let Ok(n) = decimal(s) {
        return match u64::try_from(n) {
            Ok(u) => visitor.visit_u64(u),
            Err(_) => visitor.visit_i64(n),
        };
    }
    if nullish(s) || typed_otherwise(s.text) {
        return Err(Outside);
    }
    visitor.visit_borrowed_str(s.text)
}

/// One node for serde, its start already read.
struct Node<'r, 'de> {
    r: &'r mut Reader<'de>,
    start: Start<'de>,
}

impl<'r, 'de> Node<'r, 'de> {
    fn scalar(&self) -> Result<Scalar<'de>> {
        match self.start {
            Start::Scalar(s) => Ok(s),
            _ => Err(Outside),
        }
    }

    fn map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.r.enter()?;
        match self.start {
            Start::BlockMap { indent } => visitor.visit_map(BlockMap {
                r: self.r,
                indent,
                key_column: indent,
                keys: Keys::default(),
            }),
            Start::FlowMap { min, block } => visitor.visit_map(FlowMap {
                r: self.r,
                min,
                block,
                first: true,
                done: false,
                keys: Keys::default(),
            }),
            _ => Err(Outside),
        }
    }

    fn seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.r.enter()?;
        match self.start {
            Start::BlockSeq { indent } => visitor.visit_seq(BlockSeq { r: self.r, indent }),
            Start::FlowSeq { min, block } => visitor.visit_seq(FlowSeq {
                r: self.r,
                min,
                block,
                first: true,
                done: false,
            }),
            _ => Err(Outside),
        }
    }
}

impl<'r, 'de> de::Deserializer<'de> for Node<'r, 'de> {
    type Error = Outside;

    /// Only what the schema asks for is read, unless the reader answers
    /// for any type as the full parser does.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if !self.r.guess {
            return Err(Outside);
        }
        match self.start {
            Start::Scalar(s) => visit_typed(s, visitor),
            Start::BlockMap { .. } | Start::FlowMap { .. } => self.map(visitor),
            Start::BlockSeq { .. } | Start::FlowSeq { .. } => self.seq(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar()? {
            Scalar {
                text: "true",
                plain: true,
            } => visitor.visit_bool(true),
            Scalar {
                text: "false",
                plain: true,
            } => visitor.visit_bool(false),
            _ => Err(Outside),
        }
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(decimal(self.scalar()?)?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let s = self.scalar()?;
        if nullish(s) {
            return Err(Outside);
        }
        visitor.visit_borrowed_str(s.text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        // Null values never get here (see `block_value`); a plain `null` or
        // `~` is the full parser's to read.
        if let Start::Scalar(s) = self.start {
            if nullish(s) {
                return Err(Outside);
            }
        }
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.map(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    /// A value the schema ignores (counters): read through, kept nowhere.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.start {
            Start::Scalar(_) => visitor.visit_unit(),
            Start::BlockMap { .. } | Start::FlowMap { .. } => self.map(visitor),
            Start::BlockSeq { .. } | Start::FlowSeq { .. } => self.seq(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct tuple tuple_struct enum
    }
}

/// A key, for serde: its text, whether it was plain, and whether the
/// reader answers for any type.
struct Key<'de>(&'de str, bool, bool);

impl<'de> de::Deserializer<'de> for Key<'de> {
    type Error = Outside;

    /// A key read for any type: a string, unless the full parser would
    /// type it otherwise.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let Key(text, plain, guess) = self;
        if !guess {
            return Err(Outside);
        }
        if plain && typed_otherwise(text) {
            return Err(Outside);
        }
        visitor.visit_borrowed_str(text)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
    }
}

/// The entries of a block mapping.
struct BlockMap<'r, 'de> {
    r: &'r mut Reader<'de>,
    indent: usize,
    /// Column of the key just read.
    key_column: usize,
    keys: Keys<'de>,
}

/// The keys of one mapping so far. A key twice (an error for the full
/// parser, while a map would keep the last value), a plain `null` key (a
/// null, not a string) and a quoted key starting with `__` (the names
/// serde wrappers use for themselves) are the full parser's.
#[derive(Default)]
struct Keys<'de>(Vec<&'de str>);

impl<'de> Keys<'de> {
    fn add(&mut self, key: &'de str, plain: bool) -> Result<()> {
        let null = plain && matches!(key, "null" | "Null" | "NULL");
        if null || !plain && key.starts_with("__") || self.0.contains(&key) {
            return Err(Outside);
        }
        self.0.push(key);
        Ok(())
    }
}

impl<'r, 'de> MapAccess<'de> for BlockMap<'r, 'de> {
    type Error = Outside;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        let r = &mut *self.r;
        if r.at_end() || r.column() < self.indent {
            r.depth = r.depth.saturating_sub(1);
            return Ok(None);
        }
        if r.column() > self.indent || !r.key_here() {
            // More indented (a plain scalar going on over lines?), or a
            // sequence entry where a key belongs.
            return Err(Outside);
        }
        self.key_column = r.column();
        let key = r.block_key();
        self.keys.add(key, true)?;
        seed.deserialize(Key(key, true, r.guess)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let start = self.r.block_value(self.key_column, false)?;
        seed.deserialize(Node {
            r: &mut *self.r,
            start,
        })
    }
}

/// The entries of a block sequence.
struct BlockSeq<'r, 'de> {
    r: &'r mut Reader<'de>,
    indent: usize,
}

impl<'r, 'de> SeqAccess<'de> for BlockSeq<'r, 'de> {
    type Error = Outside;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let r = &mut *self.r;
        if r.at_end() || r.column() < self.indent {
            r.depth = r.depth.saturating_sub(1);
            return Ok(None);
        }
        if r.column() > self.indent {
            return Err(Outside);
        }
        if !r.dash_here() {
            // The next key of the mapping this sequence is a value of, at
            // the same indentation.
            r.depth = r.depth.saturating_sub(1);
            return Ok(None);
        }
        r.pos += 1;
        let start = r.block_value(self.indent, true)?;
        seed.deserialize(Node { r, start }).map(Some)
    }
}

/// The entries of a flow mapping.
struct FlowMap<'r, 'de> {
    r: &'r mut Reader<'de>,
    min: usize,
    block: bool,
    first: bool,
    done: bool,
    keys: Keys<'de>,
}

impl<'r, 'de> MapAccess<'de> for FlowMap<'r, 'de> {
    type Error = Outside;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.done {
            return Ok(None);
        }
        let r = &mut *self.r;
        if !r.flow_entry(self.min, self.first, b'}', self.block)? {
            self.done = true;
            return Ok(None);
        }
        self.first = false;
        let (key, plain) = match r.peek() {
            Some(b'"' | b'\'') => {
                let key = r.quoted()?;
                if key.len() > MAX_KEY || r.peek() != Some(b':') {
                    return Err(Outside);
                }
                r.pos += 1;
                (key, false)
            }
            _ => {
                if !r.key_here() {
                    return Err(Outside);
                }
                (r.block_key(), true)
            }
        };
        self.keys.add(key, plain)?;
        seed.deserialize(Key(key, plain, r.guess)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let r = &mut *self.r;
        r.skip_flow_space(self.min)?;
        let start = r.flow_value(self.min)?;
        seed.deserialize(Node { r, start })
    }
}

/// The entries of a flow sequence.
struct FlowSeq<'r, 'de> {
    r: &'r mut Reader<'de>,
    min: usize,
    block: bool,
    first: bool,
    done: bool,
}

impl<'r, 'de> SeqAccess<'de> for FlowSeq<'r, 'de> {
    type Error = Outside;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.done {
            return Ok(None);
        }
        let r = &mut *self.r;
        if !r.flow_entry(self.min, self.first, b']', self.block)? {
            self.done = true;
            return Ok(None);
        }
        self.first = false;
        let start = r.flow_value(self.min)?;
        seed.deserialize(Node { r, start }).map(Some)
    }
}
