//! The metadata before a PrefLib file's orders: the 2022 `# KEY: VALUE`
//! header, or the older layout's counts and `i,name` lines.

use super::{DataType, MAX_ALTERNATIVES, PrefLibError, header_error};

/// What the header said, and where the order lines start.
#[derive(Default)]
pub(super) struct Header {
    pub data_type: Option<DataType>,
    pub title: Option<String>,
    pub alternatives: Option<usize>,
    pub names: Vec<Option<String>>,
    /// (line, value) of NUMBER VOTERS (legacy: the sum of counts).
    pub voters: Option<(usize, u64)>,
    /// (line, value) of NUMBER UNIQUE ORDERS.
    pub unique: Option<(usize, u64)>,
    /// Index into the non-blank lines of the first order line.
    pub body_start: usize,
    /// Its line number (for errors about missing headers).
    pub first_order_line: usize,
}

fn number<T: std::str::FromStr>(line: usize, what: &str, value: &str) -> Result<T, PrefLibError> {
    value.trim().parse().map_err(|_| header_error(line, format!("{what} {:?} is not a number", value.trim())))
}

fn alternatives(line: usize, value: &str) -> Result<usize, PrefLibError> {
    let n: usize = number(line, "NUMBER ALTERNATIVES", value)?;
    if n == 0 || n > MAX_ALTERNATIVES {
        return Err(header_error(
            line,
            format!("{n} alternatives: hivemesh tallies 1 to {MAX_ALTERNATIVES}"),
        ));
    }
    Ok(n)
}

/// Records alternative `index` (1-based text) as `name`.
fn name_alternative(head: &mut Header, line: usize, index: &str, name: &str) -> Result<(), PrefLibError> {
    let n =
        head.alternatives.ok_or_else(|| header_error(line, "alternative name before NUMBER ALTERNATIVES"))?;
    let i: usize = number(line, "alternative number", index)?;
    if i == 0 || i > n {
        return Err(header_error(line, format!("alternative {i} named, but the file has {n}")));
    }
    let name = name.trim().to_string();
    if head.names[i - 1].is_some() {
        return Err(header_error(line, format!("alternative {i} is named twice")));
    }
    if let Some(j) = head.names.iter().position(|m| m.as_deref() == Some(name.as_str())) {
        return Err(header_error(
            line,
            format!("alternative {i} has the same name as alternative {}", j + 1),
        ));
    }
    head.names[i - 1] = Some(name);
    Ok(())
}

pub(super) fn modern_header(lines: &[(usize, &str)]) -> Result<Header, PrefLibError> {
    let mut head = Header::default();
    let body_start = lines.iter().position(|(_, l)| !l.trim_start().starts_with('#')).unwrap_or(lines.len());
    // Where each key was first given: a second, different value is a
    // contradiction the file must not get away with (the last would win).
    let mut given: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for &(line, text) in &lines[..body_start] {
        let Some((key, value)) = text.trim_start().trim_start_matches('#').split_once(':') else {
            continue; // a comment, not metadata
        };
        let key = key.trim().to_ascii_uppercase();
        if let Some(first) = given.insert(key.clone(), line)
            && !key.starts_with("ALTERNATIVE NAME ")
        {
            return Err(header_error(line, format!("{key} is given twice (first on line {first})")));
        }
        match key.as_str() {
            "DATA TYPE" => {
                let t = DataType::from_name(value).ok_or_else(|| {
                    header_error(
                        line,
                        format!(
                            "DATA TYPE {:?} is not one hivemesh tallies (soc, soi, toc, toi)",
                            value.trim()
                        ),
                    )
                })?;
                head.data_type = Some(t);
            }
            "TITLE" if !value.trim().is_empty() => head.title = Some(value.trim().to_string()),
            "NUMBER ALTERNATIVES" => {
                let n = alternatives(line, value)?;
                head.alternatives = Some(n);
                head.names = vec![None; n];
            }
            "NUMBER VOTERS" => head.voters = Some((line, number(line, "NUMBER VOTERS", value)?)),
            "NUMBER UNIQUE ORDERS" => {
                head.unique = Some((line, number(line, "NUMBER UNIQUE ORDERS", value)?))
            }
            _ => {
                if let Some(index) = key.strip_prefix("ALTERNATIVE NAME ") {
                    name_alternative(&mut head, line, index, value)?;
                }
            }
        }
    }
    head.body_start = body_start;
    head.first_order_line = lines.get(body_start).or(lines.last()).map_or(1, |(l, _)| *l);
    Ok(head)
}

/// The pre-2022 layout: `n`, n lines `i,name`, `voters,sum,unique`, orders.
pub(super) fn legacy_header(lines: &[(usize, &str)]) -> Result<Header, PrefLibError> {
    let mut head = Header::default();
    let (line, first) = lines[0];
    if first.contains(':') {
        return Err(header_error(
            line,
            format!(
                "no `# DATA TYPE:` header (PrefLib 2022) and not the older layout, whose first line \
                 is the number of alternatives: found {first:?}"
            ),
        ));
    }
    let n = alternatives(line, first)?;
    head.alternatives = Some(n);
    head.names = vec![None; n];
    for k in 1..=n {
        let &(line, text) = lines
            .get(k)
            .ok_or_else(|| header_error(line, format!("{n} alternatives declared, fewer named")))?;
        let (index, name) = text
            .split_once(',')
            .ok_or_else(|| header_error(line, format!("expected \"{k},NAME\", found {text:?}")))?;
        name_alternative(&mut head, line, index, name)?;
    }
    let &(line, totals) =
        lines.get(n + 1).ok_or_else(|| header_error(line, "no \"voters,sum,unique orders\" line"))?;
    let fields: Vec<&str> = totals.split(',').collect();
    let [voters, sum, unique] = fields.as_slice() else {
        return Err(header_error(
            line,
            format!("expected \"voters,sum of counts,unique orders\", found {totals:?}"),
        ));
    };
    let voters: u64 = number(line, "number of voters", voters)?;
    let sum: u64 = number(line, "sum of counts", sum)?;
    if voters != sum {
        return Err(header_error(line, format!("{voters} voters declared, but the sum of counts is {sum}")));
    }
    head.voters = Some((line, sum));
    head.unique = Some((line, number(line, "number of unique orders", unique)?));
    head.body_start = n + 2;
    head.first_order_line = line;
    Ok(head)
}
