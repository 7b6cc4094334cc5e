//! Reading a harness process's output line by line without trusting it.
//!
//! The process runs in the jail, but whatever it writes to a pipe is read
//! into the host's memory, outside the jail's memory limit. Tokio's
//! `Lines` buffers a line until its newline, however long: a process that
//! writes gigabytes with no newline would grow the host without bound.
//! [`BoundedLines`] keeps at most `max` bytes of a line. A longer line is
//! reported as [`Line::TooLong`] as soon as it passes `max` (so a reader
//! that treats it as fatal stops at once), and the next read skips the rest
//! of it (so a reader that only drains the pipe goes on to the next line).
//! (tokio-util's `LinesCodec::new_with_max_length` has the same limit, but
//! a `FramedRead` ends at the decoder's first error, and a drain that ends
//! leaves the pipe to fill.)
//!
//! Bytes that are not UTF-8 are replaced (`U+FFFD`), not an error: a drain
//! that stopped at the first bad byte would leave the pipe full and the
//! process blocked on it.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// One line read by [`BoundedLines::next_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line without its `\n` (or `\r\n`).
    Text(String),
    /// A line that passed the limit; `at_least` bytes of it were seen. The
    /// rest is skipped by the next read.
    TooLong { at_least: usize },
}

/// Lines of at most `max` bytes from `reader`.
pub(crate) struct BoundedLines<R> {
    reader: BufReader<R>,
    max: usize,
    /// The line read so far (kept across a cancelled read, so
    /// [`BoundedLines::next_line`] is cancel-safe like tokio's).
    line: Vec<u8>,
    /// Whether the rest of an over-long line is still to be skipped.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    /// Reads `reader` through a buffer of `capacity` bytes, keeping lines of
    /// up to `max` bytes.
    pub(crate) fn new(reader: R, capacity: usize, max: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(capacity, reader),
            max,
            line: Vec::new(),
            skipping: false,
        }
    }

    /// The next line; `None` at the end of the stream (a last line without
    /// a newline is still returned).
    pub(crate) async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                self.skipping = false;
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            let consumed = newline.map_or(available.len(), |at| at + 1);
            if self.skipping {
                self.skipping = newline.is_none();
                self.reader.consume(consumed);
                continue;
            }
            if self.line.len() + content.len() > self.max {
                let at_least = self.line.len() + content.len();
                self.line = Vec::new();
                self.skipping = newline.is_none();
                self.reader.consume(consumed);
                return Ok(Some(Line::TooLong { at_least }));
            }
            self.line.extend_from_slice(content);
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> Line {
        let mut bytes = std::mem::take(&mut self.line);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        Line::Text(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<Line> {
        Some(Line::Text(s.to_owned()))
    }

    async fn all(input: &[u8], capacity: usize, max: usize) -> Vec<Line> {
        let mut lines = BoundedLines::new(input, capacity, max);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read") {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn lines_split_at_newlines_whatever_the_buffer_size() {
        let input = b"one\r\ntwo\n\nthree";
        for capacity in 1..=input.len() + 1 {
            let lines = all(input, capacity, 16).await;
            assert_eq!(
                lines,
                [text("one"), text("two"), text(""), text("three")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>(),
                "capacity {capacity}"
            );
        }
    }

    #[tokio::test]
    async fn an_over_long_line_is_reported_once_and_skipped_without_being_kept() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1 << 20));
        input.extend_from_slice(b"\nafter\n");
        let mut lines = BoundedLines::new(&input[..], 4096, 1024);
        assert_eq!(lines.next_line().await.expect("read"), text("short"));
        // Reported as soon as it passes the limit: one buffer past it.
        match lines.next_line().await.expect("read") {
            Some(Line::TooLong { at_least }) => assert!((1025..=4096).contains(&at_least)),
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert!(lines.line.capacity() <= 1024, "the line was not kept");
        assert_eq!(lines.next_line().await.expect("read"), text("after"));
        assert_eq!(lines.next_line().await.expect("read"), None);
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_limit_is_kept() {
        let input = b"abcd\nabcde\nok\n";
        assert_eq!(
            all(input, 2, 4).await,
            vec![
                Line::Text("abcd".into()),
                Line::TooLong { at_least: 5 },
                Line::Text("ok".into())
            ]
        );
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_replaced_and_reading_goes_on() {
        let input = b"a\xffb\nnext\n";
        assert_eq!(
            all(input, 8, 16).await,
            vec![Line::Text("a\u{fffd}b".into()), Line::Text("next".into())]
        );
    }
}
