//! The records the store keeps, as they are on disk.

use std::collections::{BTreeMap, BTreeSet};

use karta_harness::{TurnStatus, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;

/// Whether a participant is a person or an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantType {
    /// A person.
    #[default]
    Human,
    /// Another agent.
    Ai,
}

/// Someone who takes part in a session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Participant {
    /// Their name.
    pub name: String,
    /// A person or an agent.
    #[serde(rename = "type")]
    pub kind: ParticipantType,
}

/// A session as stored: what it is, not what was said (the history, the
/// transcript and the event log are trees of their own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Record version.
    pub v: u32,
    /// The session id.
    pub id: String,
    /// Caller metadata (e.g. `customer_id`), searchable.
    pub metadata: BTreeMap<String, String>,
    /// The agent the session talks to, if one was chosen.
    pub current_agent: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Milliseconds since the epoch, for ordering.
    pub created_ms: u64,
    /// Who has spoken, in order of first appearance.
    pub participants: Vec<Participant>,
    /// Tools a person approved for the whole session.
    pub approved_tools: BTreeSet<String>,
    /// Set (durably) when a turn starts and cleared when it ends: a record
    /// loaded with it set belongs to a turn the host did not finish.
    #[serde(default)]
    pub turn_running: bool,
    /// While a turn runs, the highest sequence number it may have handed
    /// out before the last flush. After a crash the log resumes above it,
    /// so a number a client saw but the disk lost is never given again.
    #[serde(default)]
    pub seq_reserved: u64,
    /// Whose session this is: the org, project and release it was created
    /// on, and its end user. `None` for sessions of a single-app host made
    /// before projects existed (they belong to that app's dev project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<SessionScope>,
}

/// The tenant a session belongs to, fixed at its creation: every route
/// checks it, and the session keeps running on `version` after another
/// release is activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionScope {
    /// The org's id.
    pub org_id: String,
    /// The org's slug (for `project.ref`).
    pub org_slug: String,
    /// The project's id.
    pub project_id: String,
    /// The project's slug.
    pub project_slug: String,
    /// The release the session is pinned to (0: the folder `karta serve
    /// DIR` serves, which is not a published release).
    pub version: u32,
    /// The end user (the verified `sub`, or metadata `end_user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user_id: Option<String>,
    /// The credential the session was created with, billed for its usage
    /// (per-key budgets): the API key's id, or the embed key's behind a
    /// session token. `None` for sessions from before, the operator's and
    /// dev mode's, and tokens minted without an embed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
}

impl SessionScope {
    /// The listing index key of every session of the project.
    pub fn project_key(project_id: &str) -> Vec<u8> {
        let mut key = b"p".to_vec();
        key.extend_from_slice(&(project_id.len() as u32).to_be_bytes());
        key.extend_from_slice(project_id.as_bytes());
        key
    }

    /// The listing index key of the sessions of one end user of the
    /// project.
    pub fn end_user_key(project_id: &str, end_user_id: &str) -> Vec<u8> {
        let mut key = b"u".to_vec();
        for part in [project_id, end_user_id] {
            key.extend_from_slice(&(part.len() as u32).to_be_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        key
    }

    /// Every listing index key this session appears under.
    pub fn index_keys(&self) -> Vec<Vec<u8>> {
        let mut keys = vec![Self::project_key(&self.project_id)];
        if let Some(user) = &self.end_user_id {
            keys.push(Self::end_user_key(&self.project_id, user));
        }
        keys
    }
}

impl SessionRecord {
    /// A version-1 record (history inside, next_seq and message_count kept
    /// in the record) read as the current version.
    pub(super) fn from_v1(mut old: Value) -> Result<Self, StoreError> {
        if let Some(fields) = old.as_object_mut() {
            fields.remove("next_seq");
            fields.remove("message_count");
            fields.insert("v".into(), Value::from(2));
        }
        Ok(serde_json::from_value(old)?)
    }
}

/// Who wrote a transcript message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A participant's message.
    User,
    /// The app's answer.
    Assistant,
}

/// One message of the transcript, with its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptMessage {
    /// The message id.
    pub id: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub text: String,
    /// The sender's name.
    pub participant_name: String,
    /// A person or an agent.
    pub participant_type: ParticipantType,
    /// The agent that answered (assistant messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How the turn ended (assistant messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TurnStatus>,
    /// The turn's metered tokens (assistant messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// RFC 3339.
    pub created_at: String,
}
