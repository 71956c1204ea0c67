//! A server-sent events parser over raw bytes, per the WHATWG event-stream
//! format: lines end in `\n`, `\r\n` or `\r`; `data:` lines of one event are
//! joined with `\n`; `event:` names the event; lines starting with `:` are
//! comments (keep-alives); a blank line dispatches the event. Each line is
//! decoded as UTF-8 with U+FFFD for invalid bytes, so one bad byte costs one
//! character, never the stream.
//!
//! One deliberate leniency: an event still pending when the body ends (no
//! closing blank line) is dispatched rather than dropped, since some servers
//! end with `data: [DONE]\n`.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty when absent (the standard's `message`).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental parser: feed it bytes as they arrive, in chunks of any size.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` opening the next one belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream, where a UTF-8 BOM is skipped.
    at_start: bool,
    event: String,
    data: String,
    /// At least one `data:` line since the last dispatch.
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self { at_start: true, ..Self::default() }
    }

    /// Parses `bytes`, appending each completed event to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
            self.line.extend_from_slice(&bytes[..end]);
            let line = std::mem::take(&mut self.line);
            self.line_ended(&line, out);
            let terminator = bytes[end];
            bytes = &bytes[end + 1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
    }

    /// The body ended: the last line and a pending event are taken as complete.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_ended(&line, out);
        }
        self.dispatch(out);
    }

    fn line_ended(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let mut line = line;
        if std::mem::take(&mut self.at_start) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(b":") {
            return;
        }
        let (name, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            // `id` and `retry` matter only to reconnecting browsers.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
        }
    }
}

/// The events of an SSE body, as a stream: what a client of hivemesh's own
/// API (`/v1/jobs/{id}/events`) or of any SSE server reads. An error of the
/// underlying body ends the stream with that error; the events completed
/// before it come first, and the body's end dispatches a pending event.
pub fn events<B, E>(body: B) -> impl futures_util::Stream<Item = Result<SseEvent, E>>
where
    B: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
{
    use futures_util::StreamExt;
    let state = (Box::pin(body), SseParser::new(), std::collections::VecDeque::new(), false);
    futures_util::stream::unfold(state, |(mut body, mut parser, mut ready, mut ended)| async move {
        loop {
            if let Some(event) = ready.pop_front() {
                return Some((Ok(event), (body, parser, ready, ended)));
            }
            if ended {
                return None;
            }
            let mut out = Vec::new();
            match body.next().await {
                Some(Ok(bytes)) => parser.feed(&bytes, &mut out),
                Some(Err(error)) => {
                    ended = true;
                    ready.extend(out);
                    return Some((Err(error), (body, parser, ready, ended)));
                }
                None => {
                    ended = true;
                    parser.finish(&mut out);
                }
            }
            ready.extend(out);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_as_a_stream_survive_invalid_utf8_and_end_with_the_body() {
        use futures_util::StreamExt;
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"event: tokens\ndata: caf\xff")),
            Ok(bytes::Bytes::from_static(b"e\n\nevent: done\ndata: {}")),
        ];
        let got: Vec<SseEvent> =
            events(futures_util::stream::iter(chunks)).map(|event| event.expect("no error")).collect().await;
        assert_eq!(got[0], SseEvent { event: "tokens".into(), data: "caf\u{FFFD}e".into() });
        assert_eq!(got[1], SseEvent { event: "done".into(), data: "{}".into() });
        let broken: Vec<Result<bytes::Bytes, &str>> =
            vec![Ok(bytes::Bytes::from_static(b"data: a\n\n")), Err("reset")];
        let got: Vec<Result<SseEvent, &str>> = events(futures_util::stream::iter(broken)).collect().await;
        assert_eq!(got, vec![Ok(SseEvent { event: String::new(), data: "a".into() }), Err("reset")]);
    }

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    fn data(text: &str) -> SseEvent {
        SseEvent { event: String::new(), data: text.into() }
    }

    #[test]
    fn all_three_line_endings_comments_and_multi_line_data() {
        let body = b": keep-alive\n\ndata: one\r\n\r\ndata: two\r\rdata:a\ndata:  b\n\n";
        assert_eq!(parse_in_pieces(&[body]), [data("one"), data("two"), data("a\n b")]);
    }

    #[test]
    fn the_same_events_whatever_the_chunk_boundaries() {
        let body: &[u8] = b"\xef\xbb\xbfdata: {\"a\":1}\r\n\r\nevent: error\ndata: boom\r\rdata: [DONE]\n\n";
        let whole = parse_in_pieces(&[body]);
        assert_eq!(
            whole,
            [data("{\"a\":1}"), SseEvent { event: "error".into(), data: "boom".into() }, data("[DONE]"),]
        );
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(parse_in_pieces(&[a, b]), whole, "split at byte {split}");
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(parse_in_pieces(&bytewise), whole);
    }

    #[test]
    fn invalid_utf8_becomes_one_replacement_character_and_parsing_goes_on() {
        let body = b"data: {\"content\":\"caf\xe9 ok\"}\n\ndata: [DONE]\n\n";
        assert_eq!(parse_in_pieces(&[body]), [data("{\"content\":\"caf\u{fffd} ok\"}"), data("[DONE]")]);
        // A valid multi-byte character split across two chunks stays whole.
        let euro = "data: 5 \u{20ac}\n\n".as_bytes();
        let split = euro.len() - 3;
        assert_eq!(parse_in_pieces(&[&euro[..split], &euro[split..]]), [data("5 \u{20ac}")]);
    }

    #[test]
    fn a_trailing_event_without_a_blank_line_is_kept_and_empty_events_are_not_dispatched() {
        assert_eq!(parse_in_pieces(&[b"data: [DONE]"]), [data("[DONE]")]);
        assert_eq!(parse_in_pieces(&[b"event: ping\n\n\n: only a comment\n\n"]), []);
        assert_eq!(parse_in_pieces(&[b"data\n\n"]), [data("")]);
    }

    #[test]
    fn event_names_reset_after_each_dispatch() {
        let body = b"event: error\ndata: {}\n\ndata: next\n\n";
        assert_eq!(
            parse_in_pieces(&[body]),
            [SseEvent { event: "error".into(), data: "{}".into() }, data("next")]
        );
    }
}
