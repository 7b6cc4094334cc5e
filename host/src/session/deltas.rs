//! Text and reasoning deltas that come faster than a client can use them
//! are written as one: the turn's writer lets a delta through at once when
//! no delta of its part went out in the last [`WINDOW`], and otherwise
//! holds it, appending the deltas of the same part that follow, until the
//! window has passed or another event comes (which then goes out after it,
//! so order is kept). A part's first delta is never held.
//!
//! Why: a harness replaying an answer it received in one piece (a provider
//! that sends many deltas in one packet, a fast model, Claude Code's
//! `stream_event` lines a few tens of µs apart) would otherwise make the
//! host write, number, publish and frame every few characters on their
//! own — a sled insert, an SSE frame and a wake-up of every subscriber
//! each, on the CPU the harness is using to finish the same answer.
//! PROTOCOL.md's deltas of one part concatenate, so a client sees the same
//! text; the first delta of a burst is never delayed, and a held one waits
//! at most [`WINDOW`]. A model streaming slower than one delta a window is
//! passed through as it comes.

use std::time::{Duration, Instant};

use karta_harness::{Emitted, Event};

/// The longest a delta is held for the ones that may follow it.
pub(crate) const WINDOW: Duration = Duration::from_millis(10);

/// The turn writer's hold on deltas (see the module docs).
#[derive(Default)]
pub(crate) struct Deltas {
    /// A delta waiting for more of its part.
    held: Option<Emitted>,
    /// The last delta that went out.
    last_out: Option<Sent>,
}

/// A part deltas belong to: reasoning or text, and its id.
#[derive(PartialEq, Clone, Copy)]
struct Part<'a> {
    reasoning: bool,
    id: &'a str,
}

/// When a delta went out, and its part.
struct Sent {
    at: Instant,
    reasoning: bool,
    id: String,
}

impl Sent {
    fn new(at: Instant, part: Part<'_>) -> Self {
        Self {
            at,
            reasoning: part.reasoning,
            id: part.id.to_owned(),
        }
    }

    fn part(&self) -> Part<'_> {
        Part {
            reasoning: self.reasoning,
            id: &self.id,
        }
    }
}

impl Deltas {
    /// Takes the next event of the turn (`now` is when it came); appends
    /// to `out` what is to be written now, in order.
    pub(crate) fn push(&mut self, emitted: Emitted, now: Instant, out: &mut Vec<Emitted>) {
        let Some(part) = part_of(&emitted) else {
            out.extend(self.take(now));
            out.push(emitted);
            return;
        };
        if let Some(held) = &mut self.held
            && append(held, &emitted.event)
        {
            return;
        }
        out.extend(self.take(now));
        // Held only behind a delta of the same part sent within the window:
        // a new part's first delta goes out at once.
        let behind_its_part = self
            .last_out
            .as_ref()
            .is_some_and(|sent| sent.part() == part && now < sent.at + WINDOW);
        if behind_its_part {
            self.held = Some(emitted);
        } else {
            self.last_out = Some(Sent::new(now, part));
            out.push(emitted);
        }
    }

    /// When the held delta is due (`None`: nothing is held).
    pub(crate) fn due(&self) -> Option<Instant> {
        self.held.as_ref()?;
        Some(self.last_out.as_ref()?.at + WINDOW)
    }

    /// The held delta, to be written now (its window has passed, or
    /// another event or the turn's end came).
    pub(crate) fn take(&mut self, now: Instant) -> Option<Emitted> {
        let held = self.held.take()?;
        self.last_out = part_of(&held).map(|part| Sent::new(now, part));
        Some(held)
    }
}

/// The part of a text or reasoning delta with no native payload to keep
/// beside it (`None`: any other event).
fn part_of(emitted: &Emitted) -> Option<Part<'_>> {
    if emitted.raw.is_some() {
        return None;
    }
    match &emitted.event {
        Event::Text(text) => Some(Part {
            reasoning: false,
            id: &text.part.id,
        }),
        Event::Reasoning(reasoning) => Some(Part {
            reasoning: true,
            id: &reasoning.part.id,
        }),
        _ => None,
    }
}

/// Appends `next` to `held` if both are deltas of the same part.
fn append(held: &mut Emitted, next: &Event) -> bool {
    match (&mut held.event, next) {
        (Event::Text(held), Event::Text(next)) if held.part.id == next.part.id => {
            held.part.text.push_str(&next.part.text);
            true
        }
        (Event::Reasoning(held), Event::Reasoning(next)) if held.part.id == next.part.id => {
            held.part.text.push_str(&next.part.text);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(event: Event) -> Emitted {
        Emitted { event, raw: None }
    }

    /// Pushes `events` at the given offsets (ms from `start`); what went
    /// out, with when, and then what was held at the end.
    fn run(start: Instant, events: Vec<(u64, Event)>) -> (Vec<(u64, Event)>, Deltas) {
        let mut deltas = Deltas::default();
        let mut written = Vec::new();
        for (at, event) in events {
            let now = start + Duration::from_millis(at);
            // The writer's timer: a due delta goes out before the next event.
            if let Some(due) = deltas.due()
                && due <= now
            {
                let held = deltas.take(due).expect("held");
                written.push(((due - start).as_millis() as u64, held.event));
            }
            let mut out = Vec::new();
            deltas.push(emitted(event), now, &mut out);
            written.extend(out.into_iter().map(|e| (at, e.event)));
        }
        (written, deltas)
    }

    #[test]
    fn a_burst_goes_out_as_its_first_delta_then_the_rest_as_one() {
        let start = Instant::now();
        let (written, mut deltas) = run(
            start,
            vec![
                (0, Event::step_start(0)),
                (0, Event::text("p", "You ")),
                (0, Event::text("p", "said: ")),
                (1, Event::text("p", "\"round ")),
                (1, Event::text("p", "12\".")),
                (3, Event::step_finish(0, Default::default(), "end_turn")),
            ],
        );
        assert_eq!(
            written,
            [
                (0, Event::step_start(0)),
                (0, Event::text("p", "You ")),
                (3, Event::text("p", "said: \"round 12\".")),
                (3, Event::step_finish(0, Default::default(), "end_turn")),
            ]
        );
        assert!(deltas.due().is_none() && deltas.take(start).is_none());
    }

    #[test]
    fn a_new_parts_first_delta_goes_out_at_once() {
        let start = Instant::now();
        let (written, _) = run(
            start,
            vec![
                (0, Event::reasoning("m_0", "Let ")),
                (0, Event::reasoning("m_0", "me ")),
                (0, Event::reasoning("m_0", "think.")),
                (1, Event::text("m_1", "The ")),
                (1, Event::text("m_1", "answer.")),
                (2, Event::step_finish(0, Default::default(), "end_turn")),
            ],
        );
        assert_eq!(
            written,
            [
                (0, Event::reasoning("m_0", "Let ")),
                (1, Event::reasoning("m_0", "me think.")),
                (1, Event::text("m_1", "The ")),
                (2, Event::text("m_1", "answer.")),
                (2, Event::step_finish(0, Default::default(), "end_turn")),
            ]
        );
    }

    #[test]
    fn a_held_delta_waits_at_most_the_window() {
        let start = Instant::now();
        let (written, _) = run(
            start,
            vec![
                (0, Event::text("p", "a")),
                (2, Event::text("p", "b")),
                (4, Event::text("p", "c")),
                // 10 ms after "a" went out, "bc" is due: the timer writes it.
                (25, Event::text("p", "d")),
                (40, Event::text("p", "e")),
            ],
        );
        assert_eq!(
            written,
            [
                (0, Event::text("p", "a")),
                (10, Event::text("p", "bc")),
                // 15 ms after "bc": a new burst, out at once.
                (25, Event::text("p", "d")),
                (40, Event::text("p", "e")),
            ]
        );
    }

    #[test]
    fn parts_kinds_and_native_payloads_are_never_merged_and_order_is_kept() {
        let start = Instant::now();
        let mut deltas = Deltas::default();
        let mut out = Vec::new();
        let now = start;
        deltas.push(emitted(Event::reasoning("r", "think")), now, &mut out);
        deltas.push(emitted(Event::reasoning("r", "ing")), now, &mut out);
        deltas.push(emitted(Event::text("r", "same id, text")), now, &mut out);
        deltas.push(emitted(Event::text("t", "other part")), now, &mut out);
        deltas.push(
            Emitted {
                event: Event::text("t", " with raw"),
                raw: Some(serde_json::json!({"native": true})),
            },
            now,
            &mut out,
        );
        deltas.push(emitted(Event::text("t", "last")), now, &mut out);
        assert_eq!(deltas.due(), Some(now + WINDOW));
        out.extend(deltas.take(now));
        let events: Vec<Event> = out.iter().map(|e| e.event.clone()).collect();
        assert_eq!(
            events,
            [
                Event::reasoning("r", "think"),
                Event::reasoning("r", "ing"),
                Event::text("r", "same id, text"),
                Event::text("t", "other part"),
                Event::text("t", " with raw"),
                Event::text("t", "last"),
            ]
        );
        assert!(
            out[4].raw.is_some(),
            "the native payload stays with its event"
        );
        let text: String = out
            .iter()
            .filter_map(|e| match &e.event {
                Event::Text(t) if t.part.id == "t" => Some(t.part.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "other part with rawlast");
    }
}
