//! A reader for PrefLib's ordinal preference files (`.soc`, `.soi`, `.toc`,
//! `.toi`), so real elections can be counted by `hivemesh tally`.
//!
//! Format: PrefLib-Data's `FORMAT_SPECIFICATION.md` (Mattei and Walsh,
//! "PrefLib: A Library for Preferences", ADT 2013; the 2022 layout). A
//! metadata header of `# KEY: VALUE` lines (`DATA TYPE`, `NUMBER
//! ALTERNATIVES`, `NUMBER VOTERS`, `NUMBER UNIQUE ORDERS`, `ALTERNATIVE NAME
//! i` with i from 1, and others that are ignored), then one line per distinct
//! order, `count: 1, {2, 3}, 4`: `count` voters ranked alternative 1 first,
//! then 2 and 3 tied, then 4. Alternatives an order leaves out tie below
//! every listed one. `soc` = strict complete, `soi` = strict incomplete,
//! `toc` = ties allowed, complete, `toi` = ties allowed, incomplete.
//!
//! The layout before 2022 is read too: a line holding the number of
//! alternatives, `i,name` lines, a `voters,sum of counts,unique orders` line,
//! then `count,order` lines (the type then comes from the file name).
//!
//! Every error names its 1-based line ([`PrefLibError`]); no input panics.

use std::fmt;

use header::{legacy_header, modern_header};

/// The most voters a file may hold in all: every ballot is expanded, and
/// the tally's flat arrays are indexed by `u32`.
pub const MAX_VOTERS: u64 = 1 << 24;

/// The most alternatives a file may declare (the tally's own limit).
pub const MAX_ALTERNATIVES: usize = crate::protocol::limits::MAX_CANDIDATES;

/// PrefLib's four ordinal data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// Strict orders, complete lists.
    Soc,
    /// Strict orders, incomplete lists.
    Soi,
    /// Orders with ties, complete lists.
    Toc,
    /// Orders with ties, incomplete lists.
    Toi,
}

impl DataType {
    /// The type named by a `DATA TYPE` value or a file extension (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "soc" => Some(Self::Soc),
            "soi" => Some(Self::Soi),
            "toc" => Some(Self::Toc),
            "toi" => Some(Self::Toi),
            _ => None,
        }
    }

    /// The lower-case name, as in the file extension.
    pub fn name(self) -> &'static str {
        match self {
            Self::Soc => "soc",
            Self::Soi => "soi",
            Self::Toc => "toc",
            Self::Toi => "toi",
        }
    }

    /// Whether ties (`{...}`) are refused.
    pub fn strict(self) -> bool {
        matches!(self, Self::Soc | Self::Soi)
    }

    /// Whether every order must list every alternative.
    pub fn complete(self) -> bool {
        matches!(self, Self::Soc | Self::Toc)
    }
}

/// One distinct order of a file and how many voters cast it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The 1-based line it was read from.
    pub line: usize,
    /// Voters who cast it (at least 1).
    pub count: u64,
    /// Groups best first; the members of a group tie. Candidates are
    /// 0-based (PrefLib's alternative i is candidate i-1). Never empty in a
    /// PrefLib file; a Debian ballot that ranks nothing has no group.
    pub groups: Vec<Vec<u32>>,
}

/// The layouts read into a [`PrefLibFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// PrefLib since 2022: the `# KEY: VALUE` header.
    PrefLib,
    /// PrefLib before 2022: counts and `i,name` lines, no `#`.
    PrefLibLegacy,
    /// A Debian vote's tally sheet ([`debian`]): one `V:` line per ballot.
    DebianTallySheet,
}

impl Layout {
    /// How a report names the source: "PrefLib toi file", "Debian tally sheet".
    pub fn describe(self, data_type: DataType) -> String {
        match self {
            Self::PrefLib | Self::PrefLibLegacy => format!("PrefLib {} file", data_type.name()),
            Self::DebianTallySheet => "Debian tally sheet".to_string(),
        }
    }
}

/// A parsed PrefLib file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefLibFile {
    pub data_type: DataType,
    /// `TITLE`, when the header has one.
    pub title: Option<String>,
    /// Candidate i's name (alternative i+1); `alternative N` where none is given.
    pub names: Vec<String>,
    /// The order lines, in file order.
    pub orders: Vec<Order>,
    /// Which layout the file used.
    pub layout: Layout,
}

impl PrefLibFile {
    /// Total voters: the sum of the order counts (at most [`MAX_VOTERS`]).
    pub fn voters(&self) -> u64 {
        self.orders.iter().map(|o| o.count).sum()
    }
}

/// A file hivemesh cannot read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct PrefLibError {
    /// 1-based line number.
    pub line: usize,
    pub problem: Problem,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("{0}")]
    Header(String),
    #[error("malformed order: {0}")]
    Malformed(String),
    #[error("the count {0:?} is not a number of voters (1 or more)")]
    BadCount(String),
    #[error("unknown alternative {number} (the file has {alternatives})")]
    UnknownAlternative { number: String, alternatives: usize },
    #[error("alternative {0} appears twice")]
    Duplicate(u32),
    #[error("a {0} file cannot tie alternatives ({{...}}): its orders are strict")]
    TieInStrict(&'static str),
    #[error("a {kind} file must rank every alternative; this order leaves out {missing}")]
    Incomplete { kind: &'static str, missing: String },
    #[error("the header declares {declared} {what}, the order lines hold {found}")]
    Totals { what: &'static str, declared: u64, found: u64 },
    #[error("more than {MAX_VOTERS} voters in all")]
    TooManyVoters,
}

fn err(line: usize, problem: Problem) -> PrefLibError {
    PrefLibError { line, problem }
}

fn header_error(line: usize, text: impl fmt::Display) -> PrefLibError {
    err(line, Problem::Header(text.to_string()))
}

/// Whether `bytes` look like a PrefLib file rather than a signed ballot
/// file (JSON): a `#` header, or the legacy layout's bare count first.
/// The UTF-8 byte order mark, skipped at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

pub fn looks_like_preflib(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let first_line = bytes.split(|&b| b == b'\n').find(|l| !l.trim_ascii().is_empty());
    match first_line.map(<[u8]>::trim_ascii) {
        Some(line) => line.starts_with(b"#") || line.iter().all(u8::is_ascii_digit),
        None => false,
    }
}

/// Parses a whole file. `extension_type` is the type the file name implies;
/// the `DATA TYPE` header, when present, wins.
pub fn parse(bytes: &[u8], extension_type: Option<DataType>) -> Result<PrefLibFile, PrefLibError> {
    // Editors on Windows start UTF-8 files with a byte order mark; it is not
    // part of the first header line.
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        err(line, Problem::NotUtf8)
    })?;
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let legacy = lines.first().is_some_and(|(_, l)| !l.trim_start().starts_with('#'));
    let head = if legacy { legacy_header(&lines)? } else { modern_header(&lines)? };
    let data_type = head.data_type.or(extension_type).ok_or_else(|| {
        header_error(
            head.first_order_line,
            "no DATA TYPE header, and the file name does not end in .soc, .soi, .toc or .toi",
        )
    })?;
    let n = head
        .alternatives
        .ok_or_else(|| header_error(head.first_order_line, "no NUMBER ALTERNATIVES header"))?;
    let mut seen = vec![false; n];
    let mut orders = Vec::new();
    let mut voters = 0u64;
    for &(line, text) in &lines[head.body_start..] {
        let order = parse_order(line, text, data_type, n, legacy, &mut seen)?;
        voters = voters
            .checked_add(order.count)
            .filter(|&v| v <= MAX_VOTERS)
            .ok_or(err(line, Problem::TooManyVoters))?;
        orders.push(order);
    }
    for (line, what, declared, found) in
        [(head.voters, "voters", voters), (head.unique, "unique orders", orders.len() as u64)]
            .into_iter()
            .filter_map(|(decl, what, found)| decl.map(|(line, declared)| (line, what, declared, found)))
    {
        if declared != found {
            return Err(err(line, Problem::Totals { what, declared, found }));
        }
    }
    let names = head
        .names
        .into_iter()
        .enumerate()
        .map(|(i, name)| name.unwrap_or_else(|| format!("alternative {}", i + 1)))
        .collect();
    let layout = if legacy { Layout::PrefLibLegacy } else { Layout::PrefLib };
    Ok(PrefLibFile { data_type, title: head.title, names, orders, layout })
}

/// One `count: order` (legacy: `count,order`) line. `seen` is scratch space
/// of `n` entries, all false on entry and on return.
fn parse_order(
    line: usize,
    text: &str,
    data_type: DataType,
    n: usize,
    legacy: bool,
    seen: &mut [bool],
) -> Result<Order, PrefLibError> {
    let split = if legacy { text.split_once(',') } else { text.split_once(':') };
    let (count, list) = split.ok_or_else(|| {
        err(line, Problem::Malformed(format!("expected \"COUNT: ORDER\", found {:?}", text.trim())))
    })?;
    let count = match count.trim().parse::<u64>() {
        Ok(c) if c > 0 => c,
        _ => return Err(err(line, Problem::BadCount(count.trim().to_string()))),
    };
    let result = parse_groups(line, list, data_type, n, seen);
    let groups = match result {
        Ok(groups) => groups,
        Err(e) => {
            seen.iter_mut().for_each(|s| *s = false);
            return Err(e);
        }
    };
    let missing: Vec<String> = (0..n).filter(|&i| !seen[i]).map(|i| (i + 1).to_string()).collect();
    seen.iter_mut().for_each(|s| *s = false);
    if data_type.complete() && !missing.is_empty() {
        return Err(err(line, Problem::Incomplete { kind: data_type.name(), missing: missing.join(", ") }));
    }
    Ok(Order { line, count, groups })
}

/// `1, {2, 3}, 4` into `[[0], [1, 2], [3]]`, marking each candidate in `seen`.
fn parse_groups(
    line: usize,
    list: &str,
    data_type: DataType,
    n: usize,
    seen: &mut [bool],
) -> Result<Vec<Vec<u32>>, PrefLibError> {
    let malformed = |why: String| err(line, Problem::Malformed(why));
    let mut groups = Vec::new();
    let mut rest = list.trim();
    if rest.is_empty() {
        return Err(malformed("no alternatives after the count".into()));
    }
    loop {
        let (group, after) = if let Some(inner) = rest.strip_prefix('{') {
            if data_type.strict() {
                return Err(err(line, Problem::TieInStrict(data_type.name())));
            }
            let close = inner.find('}').ok_or_else(|| malformed("a '{' is never closed".into()))?;
            let members: Vec<&str> = inner[..close].split(',').collect();
            (members, &inner[close + 1..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            (vec![&rest[..end]], &rest[end..])
        };
        let mut candidates = Vec::with_capacity(group.len());
        for item in group {
            let item = item.trim();
            if item.is_empty() {
                return Err(malformed("an empty place between commas or braces".into()));
            }
            let unknown =
                || err(line, Problem::UnknownAlternative { number: item.to_string(), alternatives: n });
            let number: usize = item.parse().map_err(|_| {
                if item.bytes().all(|b| b.is_ascii_digit()) {
                    unknown()
                } else {
                    malformed(format!("{item:?} is not an alternative number"))
                }
            })?;
            if number == 0 || number > n {
                return Err(unknown());
            }
            if std::mem::replace(&mut seen[number - 1], true) {
                return Err(err(line, Problem::Duplicate(number as u32)));
            }
            candidates.push((number - 1) as u32);
        }
        groups.push(candidates);
        rest = after.trim_start();
        if rest.is_empty() {
            return Ok(groups);
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| {
                malformed(format!("expected ',' before {:?}", rest.chars().take(12).collect::<String>()))
            })?
            .trim_start();
        if rest.is_empty() {
            return Err(malformed("a trailing ','".into()));
        }
    }
}

pub mod debian;
mod header;
#[cfg(test)]
mod tests;
