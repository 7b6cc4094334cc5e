//! What the process harnesses (Claude Code, OpenCode) share: one slot per
//! session holding its process, the idle timer, and how a turn's result
//! becomes its last event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::HarnessProcess;
use crate::{
    ErrorCode, Event, ToolError, ToolErrorKind, ToolResult, TurnContext, TurnOutcome, TurnStatus,
    Usage,
};

/// A session's running harness process, as a slot holds it.
pub(crate) trait SlotProcess: Send + 'static {
    /// The OS process.
    fn harness_process(&self) -> &HarnessProcess;
    /// Gives up everything but the OS process (to kill it).
    fn into_harness_process(self) -> HarnessProcess;
    /// When its last turn ended.
    fn last_used(&self) -> Instant;
    /// Marks a turn's end.
    fn touch(&mut self);
}

/// Implements [`SlotProcess`] for a struct with `process: HarnessProcess`
/// and `last_used: Instant` fields.
macro_rules! slot_process {
    ($type:ty) => {
        impl $crate::slots::SlotProcess for $type {
            fn harness_process(&self) -> &$crate::process::HarnessProcess {
                &self.process
            }

            fn into_harness_process(self) -> $crate::process::HarnessProcess {
                self.process
            }

            fn last_used(&self) -> std::time::Instant {
                self.last_used
            }

            fn touch(&mut self) {
                self.last_used = std::time::Instant::now();
            }
        }
    };
}
pub(crate) use slot_process;

/// The [`Harness`](crate::Harness) methods every process harness answers
/// the same way — a turn is its own `turn` method, and the rest is what
/// its [`Slots`] (its `sessions` field) know — written once: invoked
/// inside the harness's `impl Harness`.
macro_rules! slot_harness_methods {
    () => {
        fn run_turn<'a>(
            &'a self,
            request: $crate::TurnRequest,
            context: $crate::TurnContext<'a>,
        ) -> $crate::BoxFuture<'a, $crate::TurnOutcome> {
            Box::pin(self.turn(request, context))
        }

        fn end_session<'a>(&'a self, session_id: &'a str) -> $crate::BoxFuture<'a, ()> {
            Box::pin(self.sessions.end(session_id))
        }

        fn process_id(&self, session_id: &str) -> Option<u32> {
            self.sessions.pid(session_id)
        }

        fn has_process(&self, session_id: &str) -> bool {
            self.sessions.has_process(session_id)
        }

        fn process_count(&self) -> usize {
            self.sessions.count()
        }
    };
}
pub(crate) use slot_harness_methods;

/// A session's slot: its process, or `None` when stopped. A turn holds the
/// lock for its whole length (one turn per session at a time).
pub(crate) type Slot<P> = Arc<tokio::sync::Mutex<Option<P>>>;

/// The slots of every session a harness has seen.
pub(crate) struct Slots<P> {
    map: Mutex<HashMap<String, Slot<P>>>,
}

impl<P> Default for Slots<P> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

/// Whether `slot` has a process, or a turn holds it (and has or is
/// starting one).
fn has_process<P>(slot: &Slot<P>) -> bool {
    slot.try_lock().map_or(true, |process| process.is_some())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl<P: SlotProcess> Slots<P> {
    /// The slot of `session_id` (created empty on first use).
    pub(crate) fn slot(&self, session_id: &str) -> Slot<P> {
        lock(&self.map)
            .entry(session_id.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets `session_id`, killing its process (after its turn, if one
    /// runs: the caller cancels the turn first).
    pub(crate) async fn end(&self, session_id: &str) {
        let slot = lock(&self.map).remove(session_id);
        if let Some(slot) = slot
            && let Some(process) = slot.lock().await.take()
        {
            process.into_harness_process().kill().await;
        }
    }

    /// Gives `session_id` the pooled `process`, unless its slot is held
    /// or already has one (then the process comes back).
    pub(crate) fn adopt(&self, session_id: &str, process: P) -> Result<Slot<P>, P> {
        let slot = self.slot(session_id);
        let Ok(mut guard) = slot.try_lock() else {
            return Err(process);
        };
        if guard.is_some() {
            return Err(process);
        }
        *guard = Some(process);
        drop(guard);
        Ok(slot)
    }

    /// How many sessions have a process (a slot held by a turn counts: the
    /// turn has or is starting one).
    pub(crate) fn count(&self) -> usize {
        lock(&self.map)
            .values()
            .filter(|slot| has_process(slot))
            .count()
    }

    /// Whether `session_id` has a process, counted as [`Self::count`]
    /// counts.
    pub(crate) fn has_process(&self, session_id: &str) -> bool {
        lock(&self.map).get(session_id).is_some_and(has_process)
    }

    /// The process id of `session_id`'s process, when it runs and no turn
    /// holds the slot.
    pub(crate) fn pid(&self, session_id: &str) -> Option<u32> {
        let slot = lock(&self.map).get(session_id)?.clone();
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .and_then(|p| p.harness_process().harness_pid())
    }
}

/// Stops the process in `slot` once it has been idle for `idle`. The timer
/// holds the slot weakly: a session deleted or a harness dropped in the
/// meantime has already stopped its process.
pub(crate) fn stop_when_idle<P: SlotProcess>(session_id: &str, slot: &Slot<P>, idle: Duration) {
    let session_id = session_id.to_owned();
    let slot = Arc::downgrade(slot);
    tokio::spawn(async move {
        tokio::time::sleep(idle).await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        let mut guard = slot.lock().await;
        if guard
            .as_ref()
            .is_some_and(|p| p.last_used().elapsed() >= idle)
            && let Some(process) = guard.take()
        {
            tracing::debug!(session = %session_id, "stopping an idle harness process");
            process.into_harness_process().kill().await;
        }
    });
}

/// Why a turn could not go on.
#[derive(Debug)]
pub(crate) enum TurnFailure {
    /// The turn was cancelled: it ends with `done` (cancelled).
    Cancelled,
    /// The turn failed: it ends with an `error` event.
    Failed {
        /// The protocol error code.
        code: ErrorCode,
        /// The details.
        message: String,
    },
}

impl TurnFailure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Failed {
            code,
            message: message.into(),
        }
    }

    /// The harness itself failed or broke its protocol.
    pub(crate) fn harness(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::HarnessError, message)
    }

    /// The turn was cancelled.
    pub(crate) fn cancelled() -> Self {
        Self::Cancelled
    }

    /// What went wrong, for logs.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Failed { message, .. } => message,
        }
    }
}

/// Ends a turn: emits `done` (completed, denied or cancelled) or `error`. A
/// process in an unknown state — after a harness failure or a cancel — is
/// killed rather than reused; the next turn starts one that resumes the
/// session. After a `model_error` (the harness reported the model's failure
/// and finished its turn) the process is kept.
/// Returns the turn's status.
pub(crate) async fn finish_turn<P: SlotProcess>(
    slot: &mut Option<P>,
    result: Result<TurnStatus, TurnFailure>,
    cx: &TurnContext<'_>,
    message_id: String,
    usage: Usage,
    cpu_start: Duration,
) -> TurnStatus {
    let failure = match result {
        Ok(status) => {
            let mut done = Event::done(message_id, usage, status);
            if let Some(process) = slot.as_mut() {
                process.touch();
                if let (Event::Done(data), Some(now)) =
                    (&mut done, process.harness_process().cpu_time())
                {
                    data.cpu_ms = Some(now.saturating_sub(cpu_start).as_millis() as u64);
                }
            }
            cx.emit(done);
            return status;
        }
        Err(failure) => failure,
    };
    // A model error ends the turn cleanly on the harness's side: its
    // process goes on. Anything else leaves it in an unknown state.
    let keeps_process = matches!(
        failure,
        TurnFailure::Failed {
            code: ErrorCode::ModelError,
            ..
        }
    );
    if !keeps_process && let Some(process) = slot.take() {
        process.into_harness_process().kill().await;
    } else if let Some(process) = slot.as_mut() {
        process.touch();
    }
    match failure {
        TurnFailure::Cancelled => {
            cx.emit(Event::done(message_id, usage, TurnStatus::Cancelled));
            TurnStatus::Cancelled
        }
        TurnFailure::Failed { code, message } => {
            cx.emit(Event::error(code, message));
            TurnStatus::Error
        }
    }
}

/// The outcome the host records: the user's message and the assistant's
/// final text (the harness keeps the full conversation itself).
pub(crate) fn outcome(
    user_text: &str,
    text: String,
    usage: Usage,
    status: TurnStatus,
) -> TurnOutcome {
    let mut new_messages =
        vec![json!({ "role": "user", "content": [{ "type": "text", "text": user_text }] })];
    if !text.is_empty() {
        new_messages.push(json!({
            "role": "assistant", "content": [{ "type": "text", "text": text }]
        }));
    }
    TurnOutcome {
        new_messages,
        text,
        usage,
        status,
    }
}

/// The longest conversation id remembered (Claude Code's and OpenCode's
/// are a few dozen characters).
const MAX_CONVERSATION_ID: usize = 128;

/// The harness's own conversation id remembered in `home/file`, for a new
/// process to continue it.
///
/// The harness process can write its `HOME`, so the file is read without
/// following a link (a link to a secret would otherwise put the secret on
/// the next command line, `--resume <contents>`, or in a URL), only if it is
/// a regular file of a few bytes, and only an id of letters, digits, `-`
/// and `_` is taken.
pub(crate) fn remembered(home: &std::path::Path, file: &str) -> Option<String> {
    let read = crate::safe_fs::SafeDir::open(home)
        .and_then(|dir| dir.read(std::path::Path::new(file), MAX_CONVERSATION_ID as u64));
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring the remembered harness conversation: {e}");
            return None;
        }
    };
    let id = std::str::from_utf8(&bytes).ok()?.trim();
    let plain = !id.is_empty()
        && id.len() <= MAX_CONVERSATION_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !plain {
        tracing::warn!("ignoring a remembered harness conversation that is not a plain id");
        return None;
    }
    Some(id.to_owned())
}

/// Remembers the harness's conversation id in `home/file` (replacing a
/// link there, never writing through it).
pub(crate) fn remember(home: &std::path::Path, file: &str, id: &str) {
    let written = crate::safe_fs::SafeDir::open(home)
        .and_then(|dir| dir.write(std::path::Path::new(file), id.as_bytes()));
    if let Err(e) = written {
        tracing::warn!("cannot remember the harness conversation {id}: {e}");
    }
}

/// Forgets the remembered conversation (removes `home/file`; a link is
/// removed, not what it points to).
pub(crate) fn forget(home: &std::path::Path, file: &str) {
    let removed =
        crate::safe_fs::SafeDir::open(home).and_then(|dir| dir.remove(std::path::Path::new(file)));
    if let Err(e) = removed {
        tracing::warn!("cannot forget the harness conversation: {e}");
    }
}

/// A fresh message id, for a turn that ended before the model gave one.
pub(crate) fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// How a tool call the harness made ended, as the harness reported it.
pub(crate) struct ReportedResult {
    /// The result text the harness saw.
    pub(crate) text: String,
    /// Whether the harness marked it an error.
    pub(crate) is_error: bool,
    /// Whether a person denied the call.
    pub(crate) denied: bool,
}

/// The jail CPU a slot's process has used so far (zero before it exists:
/// a process started during the turn is the turn's cost).
pub(crate) fn cpu_so_far<P: SlotProcess>(slot: &Option<P>) -> Duration {
    slot.as_ref()
        .and_then(|p| p.harness_process().cpu_time())
        .unwrap_or_default()
}

/// The finished `tool_use` event of a call: from the wasm run the MCP server
/// recorded (`run`: output or error kind, fuel, time) when there is one,
/// else from what the harness reported (a denial, or a tool of its own).
pub(crate) fn finished_tool_use(
    part_id: String,
    tool: String,
    input: Value,
    run: Option<ToolResult>,
    reported: ReportedResult,
) -> Event {
    if let Some(run) = run {
        return run.event(part_id, tool, input);
    }
    let failed = |kind, message| Err(ToolError { kind, message });
    let result = if reported.denied {
        failed(ToolErrorKind::Denied, reported.text)
    } else if reported.is_error {
        failed(ToolErrorKind::ToolError, reported.text)
    } else {
        Ok(serde_json::from_str(&reported.text).unwrap_or(Value::String(reported.text)))
    };
    Event::tool_finished(part_id, tool, input, result, None, None)
}
