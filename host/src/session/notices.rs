//! The webhook events a session causes — `session.started`,
//! `turn.completed`, `turn.failed` — as outbox rows ([`Prepared`]) that the
//! store writes in the transaction of the record or event that causes
//! them ([`crate::store::Store::create_session_notifying`],
//! [`crate::store::Store::put_event_notifying`]): a receiver is told of a
//! turn exactly when its end is in the log.
//!
//! Only a tenant's sessions (a record with a scope) notify; reading the
//! org's endpoints failing loses the notice, not the turn (logged).

use karta_harness::Event;
use serde_json::{Value, json};

use super::Sessions;
use crate::store::SessionRecord;
use crate::webhooks::{EventType, Prepared};

impl Sessions {
    /// The deliveries of `session.started` for a new session.
    pub(crate) fn notice_started(&self, record: &SessionRecord) -> Prepared {
        self.notice(record, EventType::SessionStarted, |data| {
            data.insert("metadata".into(), json!(record.metadata));
        })
    }

    /// The deliveries of `turn.completed` (a `done`) or `turn.failed` (an
    /// `error`) for the terminal event of a turn, numbered `seq`.
    pub(crate) fn notice_turn_end(
        &self,
        record: &SessionRecord,
        seq: u64,
        event: &Event,
    ) -> Prepared {
        match event {
            Event::Done(done) => self.notice(record, EventType::TurnCompleted, |data| {
                data.insert("seq".into(), json!(seq));
                data.insert("message_id".into(), json!(done.message_id));
                data.insert("status".into(), json!(done.status));
                data.insert("usage".into(), json!(done.usage));
                data.insert("cost_micros".into(), json!(done.cost_micros));
            }),
            Event::Error(error) => self.notice(record, EventType::TurnFailed, |data| {
                data.insert("seq".into(), json!(seq));
                data.insert("error".into(), json!(error));
            }),
            _ => Prepared::default(),
        }
    }

    /// The deliveries of `event_type` for `record`'s org, the data being
    /// the session's tenant and what `fill` adds.
    fn notice(
        &self,
        record: &SessionRecord,
        event_type: EventType,
        fill: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Prepared {
        let (Some(webhooks), Some(scope)) = (&self.webhooks, &record.scope) else {
            return Prepared::default();
        };
        if !webhooks.subscribed(&scope.org_id, event_type) {
            return Prepared::default();
        }
        let mut data = serde_json::Map::new();
        data.insert("session_id".into(), json!(record.id));
        data.insert(
            "project".into(),
            json!(format!("{}/{}", scope.org_slug, scope.project_slug)),
        );
        data.insert("project_id".into(), json!(scope.project_id));
        data.insert("version".into(), json!(scope.version));
        data.insert("end_user_id".into(), json!(scope.end_user_id));
        fill(&mut data);
        let event_id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        webhooks
            .prepare(&scope.org_id, event_type, &event_id, &Value::Object(data))
            .unwrap_or_else(|e| {
                tracing::error!(session = %record.id, "cannot queue the {} webhook: {e}", event_type.as_str());
                Prepared::default()
            })
    }
}
