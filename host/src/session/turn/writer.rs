//! The turn's event writer: the harness's events appended in order, once
//! the turn's message is durable, the terminal one held back for
//! [`super::finish::finish`].

use std::time::Instant;

use karta_harness::Emitted;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::session::deltas::Deltas;
use crate::session::live::LiveRef;
use crate::store::Store;

/// What the writer saw of a turn.
pub(super) struct Written {
    /// The terminal event, held back.
    pub(super) terminal: Option<Emitted>,
    /// Whether the turn's message became durable (else nothing was written).
    pub(super) durable: bool,
    /// Whether an event could not be written (the turn was cancelled).
    pub(super) failed: bool,
}

/// Why the turn's event writer woke.
#[expect(
    clippy::large_enum_variant,
    reason = "it lives for one turn of the writer's loop, on its stack; a box would allocate per event"
)]
enum Woken {
    /// The harness emitted an event.
    Event(Emitted),
    /// A held delta is due.
    Due,
    /// The turn emits no more.
    Closed,
}

/// Appends the harness's events in order, once the turn's message is
/// durable, holding back the terminal one. An event that cannot be written
/// cancels the turn and nothing after it is written (a log with a gap in
/// the middle of a turn would replay as a different turn); the turn's end
/// then says why, once the session is free again (see [`super::finish::finish`]).
pub(super) async fn write_events(
    store: Store,
    live: LiveRef,
    mut events: mpsc::UnboundedReceiver<Emitted>,
    durable: oneshot::Receiver<bool>,
    cancel: CancellationToken,
) -> Written {
    if !durable.await.unwrap_or(false) {
        // The turn is being abandoned: drain, write nothing.
        while events.recv().await.is_some() {}
        return Written {
            terminal: None,
            durable: false,
            failed: false,
        };
    }
    let mut terminal = None;
    let mut failed = false;
    // Deltas in a burst go out as one (see `deltas`); `due` is when a held
    // one must be written if nothing else comes.
    let mut deltas = Deltas::default();
    let mut out = Vec::new();
    loop {
        let woken = match deltas.due() {
            Some(due) => tokio::select! {
                next = events.recv() => next.map_or(Woken::Closed, Woken::Event),
                () = tokio::time::sleep_until(due.into()) => Woken::Due,
            },
            None => events.recv().await.map_or(Woken::Closed, Woken::Event),
        };
        let closed = matches!(woken, Woken::Closed);
        let mut next = match woken {
            Woken::Event(emitted) => Some(emitted),
            // The held delta's window has passed, or no more events come:
            // it goes out now (last, at the end).
            Woken::Due | Woken::Closed => {
                out.extend(deltas.take(Instant::now()));
                None
            }
        };
        // Whatever else is queued is written under the same hold of the
        // state lock (a harness emits in bursts: deltas, a tool's events).
        while let Some(emitted) = next.take() {
            if emitted.event.ends_turn() {
                terminal.get_or_insert(emitted);
            } else {
                deltas.push(emitted, Instant::now(), &mut out);
            }
            next = events.try_recv().ok();
        }
        if !out.is_empty() {
            let mut state = live.state.lock().await;
            for emitted in out.drain(..) {
                if !failed
                    && let Err(e) = live
                        .append(&store, &mut state, emitted.event, emitted.raw)
                        .await
                {
                    tracing::error!("cannot write an event: {e}; the turn is cancelled");
                    failed = true;
                    cancel.cancel();
                }
            }
        }
        if closed {
            break;
        }
    }
    Written {
        terminal,
        durable: true,
        failed,
    }
}
