//! Reading Server-Sent Events: the one SSE reader of the workspace, for
//! every stream Karta consumes — the gateway's answers to the builtin loop,
//! an upstream provider's answers passing through the gateway, OpenCode's
//! `/event` stream, and the CLI's chat.
//!
//! The parsing is the `sse-stream` crate's (the decoder of the official Rust
//! MCP SDK): it splits events on bytes, before decoding UTF-8, so a
//! multi-byte character split across network frames arrives whole, and it
//! accepts every line ending the SSE spec allows. What this module adds is
//! a cap on the size of one event — the peer may be a harness process we do
//! not trust, and an event that never ends must not grow memory without end.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

/// One SSE event block (`event`, `data`, `id`, `retry`).
pub use sse_stream::Sse as SseEvent;

/// Why an SSE stream could not be read on.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// One event was larger than the reader accepts.
    #[error("an event of the stream is larger than {0} bytes")]
    TooLarge(usize),
    /// The transport failed or the stream is not valid SSE (invalid UTF-8).
    #[error("the event stream broke: {0}")]
    Decode(String),
}

/// A stream of SSE events.
pub type SseStream = Pin<Box<dyn Stream<Item = Result<SseEvent, SseError>> + Send>>;

/// The SSE events of a stream of byte chunks (an HTTP body's data frames),
/// each at most `max_event_bytes`. The stream ends after its first error.
pub fn events<S, E>(chunks: S, max_event_bytes: usize) -> SseStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut boundary = EventBoundary::default();
    let guarded = chunks.map(move |chunk| match chunk {
        Ok(bytes) if boundary.admit(&bytes, max_event_bytes) => Ok(bytes),
        Ok(_) => Err(ChunkError::TooLarge(max_event_bytes)),
        Err(e) => Err(ChunkError::Body(e.to_string())),
    });
    Box::pin(sse_stream::SseByteStream::new(guarded).map(|item| {
        item.map_err(|e| match e {
            sse_stream::Error::Body(inner) => match inner.downcast_ref::<ChunkError>() {
                Some(ChunkError::TooLarge(max)) => SseError::TooLarge(*max),
                _ => SseError::Decode(inner.to_string()),
            },
            other => SseError::Decode(other.to_string()),
        })
    }))
}

/// The SSE events of an HTTP body (hyper's `Incoming`, or any body of
/// `Bytes` frames).
pub fn body_events<B>(body: B, max_event_bytes: usize) -> SseStream
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    events(http_body_util::BodyDataStream::new(body), max_event_bytes)
}

/// The `data` of an event as JSON: `None` when it has no data, or when its
/// data is not JSON of type `T` (e.g. OpenAI's `[DONE]`).
pub fn json_data<T: DeserializeOwned>(event: &SseEvent) -> Option<T> {
    serde_json::from_str(event.data.as_deref()?).ok()
}

/// A failure of the chunk stream under the decoder.
#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error("{0}")]
    Body(String),
    #[error("an event of the stream is larger than {0} bytes")]
    TooLarge(usize),
}

/// Counts the bytes since the last blank line (an event's end), across
/// chunks: `\n\n`, `\r\r` or `\r\n\r\n`.
#[derive(Default)]
struct EventBoundary {
    /// The last four bytes seen, newest lowest.
    window: u32,
    since: usize,
}

impl EventBoundary {
    /// Takes in a chunk; `false` when an event has outgrown `max`.
    fn admit(&mut self, chunk: &[u8], max: usize) -> bool {
        for &byte in chunk {
            self.window = (self.window << 8) | u32::from(byte);
            self.since += 1;
            let last_two = self.window & 0xFFFF;
            if last_two == 0x0A0A || last_two == 0x0D0D || self.window == 0x0D0A_0D0A {
                self.since = 0;
            } else if self.since > max {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    async fn read(chunks: Vec<Vec<u8>>, max: usize) -> Vec<Result<SseEvent, String>> {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Bytes::from(c))),
        );
        events(stream, max)
            .map(|e| e.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_four_byte_character_split_at_every_point_arrives_whole() {
        let wire = "event: text\ndata: {\"t\":\"a😀b\"}\n\n"
            .as_bytes()
            .to_vec();
        let emoji = wire
            .windows(4)
            .position(|w| w == "😀".as_bytes())
            .expect("the emoji is in the wire");
        for split in emoji..=emoji + 4 {
            let chunks = vec![wire[..split].to_vec(), wire[split..].to_vec()];
            let read = read(chunks, 1024).await;
            assert_eq!(read.len(), 1, "split at {split}");
            let event = read[0].as_ref().expect("an event");
            assert_eq!(event.event.as_deref(), Some("text"));
            let data: serde_json::Value = json_data(event).expect("JSON data");
            assert_eq!(data["t"], "a😀b", "split at {split}");
        }
        // One byte per frame.
        let bytes: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
        let read = read(bytes, 1024).await;
        let data: serde_json::Value = json_data(read[0].as_ref().expect("event")).expect("json");
        assert_eq!(data["t"], "a😀b");
    }

    #[tokio::test]
    async fn every_line_ending_and_multi_line_data() {
        let read = read(
            vec![b"data: {\"a\":1}\r\n\r\nevent: x\rdata: {\"b\":\rdata: 2}\r\r: comment\n\ndata: [DONE]\n\n".to_vec()],
            1024,
        )
        .await;
        let data: Vec<Option<serde_json::Value>> = read
            .iter()
            .map(|e| json_data(e.as_ref().expect("event")))
            .collect();
        // The comment makes no event; `[DONE]` is data but not JSON.
        assert_eq!(
            data,
            [
                Some(serde_json::json!({"a": 1})),
                Some(serde_json::json!({"b": 2})),
                None,
            ]
        );
        let done = read[2].as_ref().expect("event");
        assert_eq!(done.data.as_deref(), Some("[DONE]"));
    }

    #[tokio::test]
    async fn an_event_that_never_ends_is_refused() {
        let endless = vec![b"data: ".to_vec(), vec![b'x'; 600], vec![b'y'; 600]];
        let read = read(endless, 1000).await;
        assert_eq!(
            read.last()
                .expect("an item")
                .as_ref()
                .expect_err("too large"),
            "an event of the stream is larger than 1000 bytes"
        );
        // Many small events in one long stream are fine.
        let many = vec![b"data: 1\n\n".repeat(1000)];
        assert_eq!(read_ok(many, 64).await, 1000);
    }

    async fn read_ok(chunks: Vec<Vec<u8>>, max: usize) -> usize {
        read(chunks, max).await.iter().filter(|e| e.is_ok()).count()
    }

    #[tokio::test]
    async fn invalid_utf8_ends_the_stream_with_an_error() {
        let read = read(vec![b"data: \xff\xfe\n\n".to_vec()], 1024).await;
        assert!(read[0].is_err(), "{read:?}");
    }
}
