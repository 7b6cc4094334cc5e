//! The event log of a session: append (number, write, publish), replay and
//! subscribe.
//!
//! An event gets its sequence number, is written to sled, and only then is
//! published, all under the session's state lock — so what a subscriber
//! sees is in the log, in order, and a client that reconnects with the last
//! number it saw (`after`) gets exactly what it missed, once.
//!
//! A stream ends after an event that ends it (`done`, `error`,
//! `input_required`: [`Event::ends_stream`]), or with an unnumbered error
//! frame ([`Published::Failed`]) when the log itself failed or the session
//! was deleted — never silently.

use std::collections::VecDeque;
use std::sync::Arc;

use karta_harness::{Envelope, ErrorData, Event, Source};
use serde_json::Value;
use tokio::sync::broadcast;

use super::live::{LiveRef, LiveSession, SessionState};
use super::{SessionError, now};
use crate::store::{Store, StoreError};
use crate::webhooks::Prepared;

/// How many sequence numbers a turn may hand out per durable reservation
/// (one flush of the record per this many events).
const SEQ_BLOCK: u64 = 256;

/// What subscribers of a session receive.
#[derive(Debug, Clone)]
pub enum Published {
    /// An event of the log.
    Event(Arc<Envelope>),
    /// The stream cannot go on (the log could not be written, the session
    /// was deleted): an unnumbered `error` frame, then the end.
    Failed(ErrorData),
}

/// Reserves sequence numbers for a turn that is starting; the caller
/// saves and flushes the record with the user's message.
pub(crate) fn reserve_seqs(state: &mut SessionState) {
    state.record.seq_reserved = state.next_seq + SEQ_BLOCK;
}

impl LiveSession {
    /// Gives `event` the next sequence number and writes it, with the
    /// webhook `deliveries` it causes in the same transaction (none for
    /// most events); does not publish it. The caller holds the state lock
    /// (`state`). While a turn runs, numbers are handed out only below a
    /// durable reservation.
    pub(crate) async fn write(
        &self,
        store: &Store,
        state: &mut SessionState,
        event: Event,
        raw: Option<Value>,
        deliveries: &Prepared,
    ) -> Result<Arc<Envelope>, StoreError> {
        let seq = state.next_seq;
        if state.record.turn_running && seq > state.record.seq_reserved {
            state.record.seq_reserved = seq + SEQ_BLOCK;
            store.put_session(&state.record)?;
            store.flush_log().await?;
        }
        let envelope = Arc::new(Envelope {
            event,
            source: Source::Karta,
            session_id: self.id.clone(),
            timestamp: now().0,
            seq,
            raw,
        });
        store.put_event_notifying(&envelope, deliveries)?;
        state.next_seq = seq + 1;
        Ok(envelope)
    }

    /// Writes `event` and publishes it (nothing, once the session is
    /// deleted).
    pub(crate) async fn append(
        &self,
        store: &Store,
        state: &mut SessionState,
        event: Event,
        raw: Option<Value>,
    ) -> Result<(), StoreError> {
        if self.is_deleted() {
            return Ok(());
        }
        let envelope = self
            .write(store, state, event, raw, &Prepared::default())
            .await?;
        self.publish(Published::Event(envelope));
        Ok(())
    }

    /// Sends to every subscriber (none listening is fine).
    pub(crate) fn publish(&self, item: Published) {
        let _ = self.events.send(item);
    }
}

/// A subscription: replays the log after `after`; then, while a turn runs,
/// follows it live until an event that ends the stream. A subscriber that
/// joins after a turn ended still gets its terminal event from the replay;
/// one that joins a paused turn ends after the pending `input_required`.
///
/// It is read in the reader's own task ([`Subscription::recv`], or as a
/// stream): no task and no channel of its own between the log and the
/// client.
pub struct Subscription {
    replay: VecDeque<Envelope>,
    rx: broadcast::Receiver<Published>,
    /// The last sequence number given.
    last: u64,
    /// Whether to follow live after the replay.
    follow: bool,
    finished: bool,
    /// Holds the session in memory while someone listens.
    live: LiveRef,
    store: Store,
}

pub(crate) async fn subscribe(
    live: LiveRef,
    store: Store,
    after: u64,
) -> Result<Subscription, SessionError> {
    // Under the state lock, so that a turn cannot end (clear its flag and
    // publish its terminal event) between the replay and the flag's read.
    let (rx, replay, running) = {
        let _state = live.state.lock().await;
        let rx = live.events.subscribe();
        let replay = store.events_after(&live.id, after)?;
        (rx, replay, live.is_running())
    };
    let replay_ends_stream = replay.last().is_some_and(|e| e.event.ends_stream());
    Ok(Subscription {
        replay: replay.into(),
        rx,
        last: after,
        follow: running && !replay_ends_stream,
        finished: false,
        live,
        store,
    })
}

impl Subscription {
    /// The next item; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Published> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(envelope) = self.replay.pop_front() {
                self.last = envelope.seq;
                if self.replay.is_empty() && !self.follow {
                    self.finished = true;
                }
                return Some(Published::Event(Arc::new(envelope)));
            }
            if !self.follow {
                self.finished = true;
                return None;
            }
            match self.rx.recv().await {
                Ok(Published::Event(envelope)) => {
                    if envelope.seq <= self.last {
                        continue;
                    }
                    self.last = envelope.seq;
                    self.finished = envelope.event.ends_stream();
                    return Some(Published::Event(envelope));
                }
                Ok(failed @ Published::Failed(_)) => {
                    self.finished = true;
                    return Some(failed);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A slow subscriber fell behind the channel: catch up
                    // from the log, which has everything, up to the event
                    // that ends the stream (the loop replays it).
                    let Ok(missed) = self.store.events_after(&self.live.id, self.last) else {
                        self.finished = true;
                        return None;
                    };
                    let mut missed: VecDeque<Envelope> = missed.into();
                    if let Some(end) = missed.iter().position(|e| e.event.ends_stream()) {
                        missed.truncate(end + 1);
                        self.follow = false;
                    }
                    self.replay = missed;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.finished = true;
                    return None;
                }
            }
        }
    }

    /// The subscription as a stream.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Published> + Send {
        futures_util::stream::unfold(self, |mut subscription| async move {
            subscription.recv().await.map(|item| (item, subscription))
        })
    }
}
