use super::*;

/// The header of a 4-alternative file of `kind` with `voters` voters in
/// `unique` order lines (lines 1-10; orders start on line 11).
fn head(kind: &str, voters: u64, unique: u64) -> String {
    format!(
        "# FILE NAME: test.{kind}\n# TITLE: Debian 2020 example\n# DATA TYPE: {kind}\n\
         # NUMBER ALTERNATIVES: 4\n# NUMBER VOTERS: {voters}\n# NUMBER UNIQUE ORDERS: {unique}\n\
         # ALTERNATIVE NAME 1: Carter\n# ALTERNATIVE NAME 2: Chandran\n# ALTERNATIVE NAME 3: Gupta\n\
         # ALTERNATIVE NAME 4: None Of The Above\n"
    )
}

fn problem(text: &str) -> PrefLibError {
    parse(text.as_bytes(), None).expect_err("must be refused")
}

#[test]
fn the_debian_2020_ballot_is_a_toi_line_with_a_tie_and_an_unranked_alternative() {
    // "1 Carter, 2 Chandran and Gupta, None of the Above unranked".
    let file = parse(format!("{}3: 1,{{2,3}}\n", head("toi", 3, 1)).as_bytes(), None).expect("parse");
    assert_eq!(file.data_type, DataType::Toi);
    assert_eq!(file.title.as_deref(), Some("Debian 2020 example"));
    assert_eq!(file.names, ["Carter", "Chandran", "Gupta", "None Of The Above"]);
    assert_eq!(file.orders, vec![Order { line: 11, count: 3, groups: vec![vec![0], vec![1, 2]] }]);
    assert_eq!(file.voters(), 3);
    assert_eq!(file.layout, Layout::PrefLib);
}

#[test]
fn spaces_crlf_and_blank_lines_are_accepted() {
    let text = format!("{}\r\n2 :  4 , {{ 3 ,1 }} ,2 \r\n\r\n", head("toc", 2, 1).replace('\n', "\r\n"));
    let file = parse(text.as_bytes(), None).expect("parse");
    assert_eq!(file.orders[0].groups, vec![vec![3], vec![2, 0], vec![1]]);
    assert_eq!(file.orders[0].line, 12, "the blank line 11 still counts");
}

#[test]
fn the_pre_2022_layout_is_read_with_its_type_from_the_file_name() {
    let text = "3\n1,Alice\n2,Bob\n3,Carol\n5,5,2\n3,1,2,3\n2,{2,3},1\n";
    let file = parse(text.as_bytes(), Some(DataType::Toc)).expect("parse");
    assert_eq!(file.layout, Layout::PrefLibLegacy);
    assert_eq!(file.names, ["Alice", "Bob", "Carol"]);
    assert_eq!(file.orders[1], Order { line: 7, count: 2, groups: vec![vec![1, 2], vec![0]] });
    let untyped = parse(text.as_bytes(), None).expect_err("no type");
    assert!(untyped.to_string().contains("DATA TYPE"), "{untyped}");
    let wrong_sum = parse(text.replace("5,5,2", "5,6,2").as_bytes(), Some(DataType::Toc)).expect_err("sum");
    assert_eq!(wrong_sum.line, 5, "{wrong_sum}");
}

#[test]
fn the_header_type_wins_over_the_file_name() {
    let text = format!("{}1: 1,2\n", head("soi", 1, 1));
    assert_eq!(parse(text.as_bytes(), Some(DataType::Toc)).expect("parse").data_type, DataType::Soi);
}

#[test]
fn every_malformed_order_is_refused_naming_its_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("toi", "1 1,2", "COUNT: ORDER"),
        ("toi", "1: 1,,2", "empty place"),
        ("toi", "1: 1,2,", "trailing"),
        ("toi", "1:", "no alternatives"),
        ("toi", "1: 1 2", "not an alternative number"),
        ("toi", "1: {1,2", "never closed"),
        ("toi", "1: {}", "empty place"),
        ("toi", "1: {1,{2}}", "not an alternative number"),
        ("toi", "1: {1}2", "expected ','"),
        ("toi", "1: 5", "unknown alternative 5 (the file has 4)"),
        ("toi", "1: 0", "unknown alternative 0"),
        ("toi", "1: 99999999999999999999999", "unknown alternative"),
        ("toi", "1: -1", "not an alternative number"),
        ("toi", "1: 1,{2,1}", "alternative 1 appears twice"),
        ("soi", "1: 1,{2,3}", "a soi file cannot tie"),
        ("soc", "1: {1},2,3,4", "a soc file cannot tie"),
        ("soc", "1: 1,2,3", "leaves out 4"),
        ("toc", "1: {1,3}", "leaves out 2, 4"),
        ("toi", "0: 1", "the count \"0\""),
        ("toi", "x: 1", "the count \"x\""),
        ("toi", "-3: 1", "the count \"-3\""),
    ];
    for (kind, order, expected) in cases {
        let first = if kind.ends_with('c') { "1: 1,2,3,4" } else { "1: 1" };
        let text = format!("{}{first}\n{order}\n", head(kind, 2, 2));
        let e = problem(&text);
        assert_eq!(e.line, 12, "{kind} {order:?}: {e}");
        assert!(
            e.to_string().starts_with("line 12: ") && e.to_string().contains(expected),
            "{kind} {order:?}: {e}"
        );
    }
}

#[test]
fn declared_totals_must_match_the_order_lines() {
    let e = problem(&format!("{}2: 1\n", head("toi", 3, 1)));
    assert_eq!(e.to_string(), "line 5: the header declares 3 voters, the order lines hold 2");
    let e = problem(&format!("{}2: 1\n1: 2\n", head("toi", 3, 1)));
    assert_eq!(e.to_string(), "line 6: the header declares 1 unique orders, the order lines hold 2");
}

#[test]
fn header_mistakes_are_refused_naming_their_line() {
    let good = head("toi", 1, 1) + "1: 1\n";
    let cases: &[(&str, &str, usize, &str)] = &[
        ("# DATA TYPE: toi", "# DATA TYPE: cat", 3, "DATA TYPE \"cat\""),
        ("# NUMBER ALTERNATIVES: 4", "# NUMBER ALTERNATIVES: four", 4, "is not a number"),
        ("# NUMBER ALTERNATIVES: 4", "# NUMBER ALTERNATIVES: 0", 4, "0 alternatives"),
        ("# NUMBER ALTERNATIVES: 4", "# NUMBER ALTERNATIVES: 100000", 4, "100000 alternatives"),
        (
            "# ALTERNATIVE NAME 3: Gupta",
            "# ALTERNATIVE NAME 5: Gupta",
            9,
            "alternative 5 named, but the file has 4",
        ),
        ("# ALTERNATIVE NAME 3: Gupta", "# ALTERNATIVE NAME 2: Gupta", 9, "named twice"),
        ("# ALTERNATIVE NAME 3: Gupta", "# ALTERNATIVE NAME 3: Carter", 9, "same name as alternative 1"),
        ("# NUMBER VOTERS: 1", "# NUMBER VOTERS: many", 5, "is not a number"),
        ("# DATA TYPE: toi\n", "", 10, "no DATA TYPE header"),
    ];
    for (from, to, line, expected) in cases {
        let e = problem(&good.replacen(from, to, 1));
        assert_eq!(e.line, *line, "{to:?}: {e}");
        assert!(e.to_string().contains(expected), "{to:?}: {e}");
    }
}

#[test]
fn non_utf8_text_is_refused_naming_its_line() {
    let mut bytes = (head("toi", 1, 1) + "1: 1\n").into_bytes();
    let at = bytes.len() - 3;
    bytes[at] = 0xff;
    assert_eq!(parse(&bytes, None).expect_err("not utf-8").to_string(), "line 11: not UTF-8 text");
}

#[test]
fn a_file_of_more_than_max_voters_is_refused_before_it_is_expanded() {
    let e = problem(&format!("{}{}: 1\n", head("toi", MAX_VOTERS + 1, 1), MAX_VOTERS + 1));
    assert_eq!(e.line, 11);
    assert_eq!(e.problem, Problem::TooManyVoters);
    let e = problem(&format!("{}18446744073709551615: 1\n1: 2\n", head("toi", 1, 2)));
    assert_eq!((e.line, e.problem), (11, Problem::TooManyVoters));
}

#[test]
fn missing_names_get_a_placeholder() {
    let text = head("toi", 1, 1).replace("# ALTERNATIVE NAME 2: Chandran\n", "") + "1: 2\n";
    assert_eq!(parse(text.as_bytes(), None).expect("parse").names[1], "alternative 2");
}

#[test]
fn detection_tells_preflib_from_a_signed_ballot_file() {
    assert!(looks_like_preflib(head("soc", 1, 1).as_bytes()));
    assert!(looks_like_preflib(b"\n3\n1,Alice\n"));
    assert!(!looks_like_preflib(b"  {\"job\": \"00\"}"));
    assert!(!looks_like_preflib(b""));
}

#[test]
fn no_edit_of_a_valid_file_makes_the_parser_panic() {
    let good = format!("{}2: 1,{{2,3}},4\n1: 3\n", head("toi", 3, 2));
    let legacy = "3\n1,A\n2,B\n3,C\n3,3,2\n2,1,{2,3}\n1,3\n".to_string();
    for text in [good, legacy] {
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'{', b'}', b',', b':', b'#', b'0', b'9', b'\n', b' ', 0xc3, 0xff] {
                let mut edited = bytes.to_vec();
                edited[i] = b;
                let _ = parse(&edited, Some(DataType::Toi));
                let _ = parse(&edited[..i], None);
            }
        }
    }
}
