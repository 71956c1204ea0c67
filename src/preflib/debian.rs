//! A reader for the tally sheets Debian publishes after each vote
//! (`https://www.debian.org/vote/YEAR/vote_NNN_tally.txt`, written by
//! devotee): the options as `Option N ...: NAME` lines, then one line per
//! ballot, `V: 1-22   HMAC-or-login`, whose i-th character is the rank the
//! voter gave option i (`1` best; equal digits tie; `-` unranked, which
//! Debian counts as tied below every ranked option). Each ballot becomes a
//! weak order of count 1, so the sheet is tallied like a PrefLib `toi` file.

use super::{
    DataType, Layout, MAX_ALTERNATIVES, MAX_VOTERS, Order, PrefLibError, PrefLibFile, Problem, err,
    header_error,
};

/// Whether `bytes` look like a Debian tally sheet: some line starts with
/// `V:` and the text is neither JSON nor a PrefLib header.
pub fn looks_like_tally_sheet(bytes: &[u8]) -> bool {
    let first = bytes.split(|&b| b == b'\n').find(|l| !l.trim_ascii().is_empty());
    if first.is_none_or(|l| l.trim_ascii().starts_with(b"{") || l.trim_ascii().starts_with(b"#")) {
        return false;
    }
    bytes.split(|&b| b == b'\n').any(|l| l.trim_ascii_start().starts_with(b"V:"))
}

/// Parses a tally sheet. Option names come from its `Option N` lines (they
/// must run 1, 2, 3, ...); without any, options are named `option i` and
/// counted from the first ballot. Every `V:` string must have one
/// character per option. Errors name the line.
pub fn parse_tally_sheet(bytes: &[u8]) -> Result<PrefLibFile, PrefLibError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        err(line, Problem::NotUtf8)
    })?;
    let mut names: Vec<String> = Vec::new();
    let mut orders = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if let Some(vote) = trimmed.strip_prefix("V:") {
            let ranks = vote.split_whitespace().next().unwrap_or("");
            if names.is_empty() {
                names = (1..=ranks.chars().count()).map(|i| format!("option {i}")).collect();
                if names.is_empty() || names.len() > MAX_ALTERNATIVES {
                    return Err(header_error(
                        line,
                        format!("{} options: hivemesh tallies 1 to {MAX_ALTERNATIVES}", names.len()),
                    ));
                }
            }
            if orders.len() as u64 >= MAX_VOTERS {
                return Err(err(line, Problem::TooManyVoters));
            }
            orders.push(Order { line, count: 1, groups: groups(line, ranks, names.len())? });
        } else if let Some(name) = option_line(trimmed) {
            let (number, name) = name;
            if !orders.is_empty() {
                return Err(header_error(line, "an Option line after the first V: line"));
            }
            if number != names.len() + 1 {
                return Err(header_error(
                    line,
                    format!("option {number} listed where option {} belongs", names.len() + 1),
                ));
            }
            if names.len() == MAX_ALTERNATIVES {
                return Err(header_error(line, format!("more than {MAX_ALTERNATIVES} options")));
            }
            names.push(name.to_string());
        }
    }
    if orders.is_empty() {
        return Err(header_error(text.split('\n').count(), "no \"V:\" ballot lines"));
    }
    Ok(PrefLibFile { data_type: DataType::Toi, title: None, names, orders, layout: Layout::DebianTallySheet })
}

/// `Option 2-------->: Sruthi Chandran` (any prefix, such as `|/`, before
/// `Option`) into (2, "Sruthi Chandran").
fn option_line(line: &str) -> Option<(usize, &str)> {
    let rest = &line[line.find("Option ")? + "Option ".len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let number = rest[..digits].parse().ok()?;
    let name = rest[digits..].split_once(':')?.1.trim();
    (!name.is_empty()).then_some((number, name))
}

/// A vote string into groups best first: options sharing a rank tie;
/// `-` leaves an option unranked.
fn groups(line: usize, ranks: &str, options: usize) -> Result<Vec<Vec<u32>>, PrefLibError> {
    let malformed = |why: String| err(line, Problem::Malformed(why));
    if ranks.chars().count() != options {
        return Err(malformed(format!(
            "vote {ranks:?} has {} places for {options} options",
            ranks.chars().count()
        )));
    }
    let mut by_rank: Vec<Vec<u32>> = vec![Vec::new(); 9];
    for (option, c) in ranks.chars().enumerate() {
        match c {
            '-' => {}
            '1'..='9' => by_rank[c as usize - '1' as usize].push(option as u32),
            other => {
                return Err(malformed(format!("{other:?} in vote {ranks:?} is neither a rank 1-9 nor '-'")));
            }
        }
    }
    by_rank.retain(|g| !g.is_empty());
    Ok(by_rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHEET: &str = "           Tally Sheet for the votes cast.\n\
        \n     Option 1--------->: Jonathan Carter\n   /  Option 2-------->: Sruthi Chandran\n\
        \x20  |/  Option 3------->: Brian Gupta\n   ||/  Option 4------>: None Of The Above\n   |||/\n\
        V: 122-\t\t6e7f2b\nV: 3214\t\tc0ffee\nV: ----\t\tabc123\n";

    #[test]
    fn the_debian_2020_example_ballot_is_one_ranked_a_tie_and_one_unranked() {
        let file = parse_tally_sheet(SHEET.as_bytes()).expect("parse");
        assert_eq!(file.names, ["Jonathan Carter", "Sruthi Chandran", "Brian Gupta", "None Of The Above"]);
        assert_eq!(file.orders[0], Order { line: 8, count: 1, groups: vec![vec![0], vec![1, 2]] });
        assert_eq!(file.orders[1].groups, vec![vec![2], vec![1], vec![0], vec![3]]);
        assert!(file.orders[2].groups.is_empty(), "a ballot ranking nothing");
        assert_eq!(file.voters(), 3);
        assert!(looks_like_tally_sheet(SHEET.as_bytes()));
        assert!(!looks_like_tally_sheet(b"{\"V:\": 1}\nV: 12"));
        assert!(!looks_like_tally_sheet(b"# DATA TYPE: toi\nV: 12"));
    }

    #[test]
    fn malformed_sheets_are_refused_naming_the_line() {
        for (from, to, expected) in [
            ("V: 3214", "V: 321", "line 9: malformed order: vote \"321\" has 3 places for 4 options"),
            ("V: 3214", "V: 32x4", "line 9: malformed order: 'x' in vote"),
            ("V: 3214", "V: 3204", "line 9: malformed order: '0' in vote"),
            ("Option 3", "Option 5", "line 5: option 5 listed where option 3 belongs"),
        ] {
            let e = parse_tally_sheet(SHEET.replacen(from, to, 1).as_bytes()).expect_err(to);
            assert!(e.to_string().starts_with(expected), "{to}: {e}");
        }
        let e = parse_tally_sheet(b"Option 1: A\nOption 2: B\n").expect_err("no votes");
        assert_eq!(e.to_string(), "line 3: no \"V:\" ballot lines");
        let unnamed = parse_tally_sheet(b"V: 21 x\nV: 1- y\n").expect("parse");
        assert_eq!(unnamed.names, ["option 1", "option 2"]);
        let mut bytes = SHEET.as_bytes().to_vec();
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        assert_eq!(parse_tally_sheet(&bytes).expect_err("utf-8").to_string(), "line 10: not UTF-8 text");
    }
}
