//! A session's life as a stored record: created (or resumed by id),
//! described and listed without loading it into memory, and deleted with
//! everything it owns.

use std::collections::BTreeMap;

use karta_harness::{ErrorCode, ErrorData};

use super::log::Published;
use super::{SessionError, SessionObject, Sessions, lock, now};
use crate::store::{SessionRecord, Store};

/// Page `page` (1-based) of `per_page` of the stored sessions a listing
/// asks for.
pub fn list_page(
    store: &Store,
    scope: Option<&[u8]>,
    filters: &BTreeMap<String, String>,
    page: usize,
    per_page: usize,
) -> Result<crate::store::SessionPage, SessionError> {
    let offset = page
        .checked_sub(1)
        .and_then(|p| p.checked_mul(per_page))
        .ok_or_else(|| SessionError::Invalid("`page` × `per_page` is too large".into()))?;
    Ok(store.list_sessions(scope, filters, offset, per_page)?)
}

/// A session id a client may choose: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Sessions {
    /// The stored record of session `id` (`NotFound` if there is none).
    pub(super) fn record(&self, id: &str) -> Result<SessionRecord, SessionError> {
        self.store
            .session(id)?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))
    }

    /// Creates a session, or returns the existing one when `session_id` names
    /// one (resume). Durable before it returns; it does not stay in memory.
    pub async fn create(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<SessionObject, SessionError> {
        self.create_for(session_id, metadata, None).await
    }

    /// [`Sessions::create`] for an end user: the session is stamped with
    /// this manager's project and release and with `end_user_id`, and is
    /// listed under them. (Whether an existing `session_id` belongs to the
    /// caller is the API's check, made before this.)
    pub async fn create_for(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
        end_user_id: Option<String>,
    ) -> Result<SessionObject, SessionError> {
        self.create_billed(session_id, metadata, end_user_id, None)
            .await
    }

    /// [`Sessions::create_for`], also stamped with the credential the
    /// session is created with (`credential_id`: its usage counts against
    /// that key's budgets).
    pub async fn create_billed(
        &self,
        session_id: Option<String>,
        metadata: BTreeMap<String, String>,
        end_user_id: Option<String>,
        credential_id: Option<String>,
    ) -> Result<SessionObject, SessionError> {
        if metadata.len() > 50 {
            return Err(SessionError::Invalid(
                "metadata may hold at most 50 keys".into(),
            ));
        }
        if let Some(id) = &session_id {
            if !valid_session_id(id) {
                return Err(SessionError::Invalid(
                    "session_id must be 1-64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            if self.store.contains_session(id)? {
                return self.object(id).await;
            }
        }
        let id = session_id.unwrap_or_else(|| format!("ses_{}", uuid::Uuid::new_v4().simple()));
        let (stamp, ms) = now();
        let record = SessionRecord {
            v: 2,
            id: id.clone(),
            metadata,
            current_agent: None,
            created_at: stamp.clone(),
            updated_at: stamp,
            created_ms: ms,
            participants: Vec::new(),
            approved_tools: Default::default(),
            turn_running: false,
            seq_reserved: 0,
            scope: self.config.scope.clone().map(|mut scope| {
                scope.end_user_id = end_user_id;
                scope.credential_id = credential_id;
                scope
            }),
        };
        std::fs::create_dir_all(self.workspace(&id)).map_err(|e| {
            SessionError::Invalid(format!("cannot create the session workspace: {e}"))
        })?;
        let deliveries = self.notice_started(&record);
        self.store.create_session_notifying(&record, &deliveries)?;
        self.store.flush_log().await?;
        if !deliveries.is_empty() {
            self.wake_webhooks();
        }
        Ok(SessionObject::new(&record, false, None))
    }

    /// The protocol's session object.
    pub async fn object(&self, id: &str) -> Result<SessionObject, SessionError> {
        let live = self.live.get(id).await?;
        let record = live.state.lock().await.record.clone();
        Ok(SessionObject::new(
            &record,
            live.is_running(),
            live.approvals.first_pending(),
        ))
    }

    /// Sessions under `scope` (a [`crate::store::SessionScope`] index key;
    /// `None`: all) whose metadata contains every `filters` pair, newest
    /// first: page `page` (1-based) of `per_page`, and how many match in
    /// all.
    pub fn list(
        &self,
        scope: Option<&[u8]>,
        filters: &BTreeMap<String, String>,
        page: usize,
        per_page: usize,
    ) -> Result<(Vec<SessionObject>, usize), SessionError> {
        let found = list_page(&self.store, scope, filters, page, per_page)?;
        let objects = found.records.iter().map(|r| self.describe(r)).collect();
        Ok((objects, found.total))
    }

    /// The session object of a stored record, with its turn and approvals
    /// when this manager holds it in memory.
    pub fn describe(&self, record: &SessionRecord) -> SessionObject {
        match self.live.peek(&record.id) {
            Some(live) => {
                SessionObject::new(record, live.is_running(), live.approvals.first_pending())
            }
            None => SessionObject::new(record, false, None),
        }
    }

    /// Deletes a session: cancels its turn, drops its log, transcript and
    /// workspace, revokes its credentials, stops its harness process. Its
    /// subscribers' streams end with a `session_deleted` error frame.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let live = self.live.get(id).await?;
        live.mark_deleted();
        if let Some(cancel) = lock(&live.turn).clone() {
            cancel.cancel();
        }
        live.approvals.clear();
        {
            let _state = live.state.lock().await;
            self.store.delete_session(id)?;
            self.store.flush_log().await?;
        }
        live.publish(Published::Failed(ErrorData {
            code: ErrorCode::SessionDeleted,
            message: format!("session `{id}` was deleted"),
        }));
        self.live.remove(id);
        self.credentials.revoke(id);
        self.gateway.take_usage(id);
        if let Some(ledger) = &self.toolbox.ledger {
            ledger.forget(id);
            ledger.take_turn_cost(id);
        }
        if let Some(harness) = &self.harness {
            harness.end_session(id).await;
        }
        self.harness_sync.forget(&self.workspace(id));
        let _ = std::fs::remove_dir_all(self.workspace(id));
        let _ = std::fs::remove_dir_all(self.config.homes.join(id));
        Ok(())
    }
}
