//! The credentials a session's turn carries out of the host: its gateway key
//! (the model endpoint meters calls to the session it names) and its MCP
//! token (the MCP server runs the session's tools for whoever holds it).
//!
//! Both are unguessable bearer strings (`kgw_…`, `kmcp_…`, 128 random bits)
//! minted together on a session's first turn and kept while something may
//! use them: while the session is in memory, while a harness process that
//! was given them still runs, or while they were used lately. They are
//! revoked when the session is deleted, and by a periodic sweep once none
//! of that holds any more (see `session::live`), so the registry stays as
//! small as the set of sessions at work. A revoked credential is refused
//! like a forged one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session's two credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCredentials {
    /// For the model gateway (`x-api-key` / `Authorization: Bearer`).
    pub gateway_key: String,
    /// For the MCP server (in the endpoint's path).
    pub mcp_token: String,
}

/// Who holds a gateway key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHolder {
    /// A session: the gateway meters the key's calls to it.
    Session(String),
    /// A warm pool's slot no session has claimed yet: its process's calls
    /// are its warm-up, which the gateway answers itself — never upstream,
    /// never metered (see `session::pool`).
    PoolSlot(String),
}

/// Every credential issued and not revoked.
#[derive(Default)]
pub struct Credentials {
    inner: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    by_session: HashMap<String, Issued>,
    /// gateway key or MCP token -> session id.
    owner: HashMap<String, String>,
}

struct Issued {
    credentials: SessionCredentials,
    last_used: Instant,
    /// Held by a warm pool's process that no session has claimed yet: not
    /// idle whatever its age (see [`Credentials::for_pool_slot`]).
    pooled: bool,
}

fn lock(mutex: &Mutex<Maps>) -> std::sync::MutexGuard<'_, Maps> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn mint(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl Credentials {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The credentials of `session`, minted on first use.
    pub fn for_session(&self, session: &str) -> SessionCredentials {
        let mut maps = lock(&self.inner);
        if let Some(existing) = maps.by_session.get_mut(session) {
            existing.last_used = Instant::now();
            return existing.credentials.clone();
        }
        mint_into(&mut maps, session, false)
    }

    /// Fresh credentials of a warm pool's slot `slot` (an id no session
    /// can have): the pooled process starts with them, and they stay until
    /// a session claims the slot ([`Credentials::rebind`]) or the pool
    /// drops it ([`Credentials::revoke`]). Until then the gateway and the
    /// MCP server know them as the slot's, which is no session: nothing is
    /// metered to them and no tool runs for them.
    pub fn for_pool_slot(&self, slot: &str) -> SessionCredentials {
        let mut maps = lock(&self.inner);
        if let Some(old) = maps.by_session.remove(slot) {
            maps.owner.remove(&old.credentials.gateway_key);
            maps.owner.remove(&old.credentials.mcp_token);
        }
        mint_into(&mut maps, slot, true)
    }

    /// Makes the credentials of pool slot `slot` `session`'s: its pooled
    /// process, now the session's, goes on using them, and from now on
    /// they name the session (the gateway meters to it, the MCP server runs
    /// its tools). Whatever `session` held before is revoked; `slot` holds
    /// nothing any more. `None` when `slot` holds nothing.
    pub fn rebind(&self, slot: &str, session: &str) -> Option<SessionCredentials> {
        let mut maps = lock(&self.inner);
        let mut issued = maps.by_session.remove(slot)?;
        if let Some(old) = maps.by_session.remove(session) {
            maps.owner.remove(&old.credentials.gateway_key);
            maps.owner.remove(&old.credentials.mcp_token);
        }
        for secret in [
            &issued.credentials.gateway_key,
            &issued.credentials.mcp_token,
        ] {
            maps.owner.insert(secret.clone(), session.to_owned());
        }
        issued.pooled = false;
        issued.last_used = Instant::now();
        let credentials = issued.credentials.clone();
        maps.by_session.insert(session.to_owned(), issued);
        Some(credentials)
    }

    /// The session (or pool slot) a gateway key belongs to.
    pub fn session_for_gateway_key(&self, key: &str) -> Option<String> {
        self.owner_of(key, |c| &c.gateway_key)
            .map(|(owner, _)| owner)
    }

    /// Who holds a gateway key: a session, or a pool slot no session has
    /// claimed yet — told apart in one look, so a claim between two looks
    /// cannot make a slot's call a session's or back.
    pub fn gateway_key_holder(&self, key: &str) -> Option<KeyHolder> {
        let (owner, pooled) = self.owner_of(key, |c| &c.gateway_key)?;
        Some(if pooled {
            KeyHolder::PoolSlot(owner)
        } else {
            KeyHolder::Session(owner)
        })
    }

    /// The session (or pool slot) an MCP token belongs to.
    pub fn session_for_mcp_token(&self, token: &str) -> Option<String> {
        self.owner_of(token, |c| &c.mcp_token)
            .map(|(owner, _)| owner)
    }

    /// The owner of `secret`, and whether it is a pool slot, if `secret` is
    /// that owner's credential of the kind `field` picks (a gateway key is
    /// no MCP token, and back).
    fn owner_of(
        &self,
        secret: &str,
        field: impl Fn(&SessionCredentials) -> &String,
    ) -> Option<(String, bool)> {
        let mut maps = lock(&self.inner);
        let session = maps.owner.get(secret)?.clone();
        let issued = maps.by_session.get_mut(&session)?;
        if field(&issued.credentials) != secret {
            return None;
        }
        issued.last_used = Instant::now();
        Some((session, issued.pooled))
    }

    /// Revokes the credentials of `session`.
    pub fn revoke(&self, session: &str) {
        let mut maps = lock(&self.inner);
        if let Some(issued) = maps.by_session.remove(session) {
            maps.owner.remove(&issued.credentials.gateway_key);
            maps.owner.remove(&issued.credentials.mcp_token);
        }
    }

    /// The sessions whose credentials were not used for `idle`.
    pub fn idle_sessions(&self, idle: Duration) -> Vec<String> {
        lock(&self.inner)
            .by_session
            .iter()
            .filter(|(_, issued)| !issued.pooled && issued.last_used.elapsed() >= idle)
            .map(|(session, _)| session.clone())
            .collect()
    }

    /// How many sessions hold credentials.
    pub fn len(&self) -> usize {
        lock(&self.inner).by_session.len()
    }

    /// Whether no session holds credentials.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Mints `owner`'s credentials into `maps`.
fn mint_into(maps: &mut Maps, owner: &str, pooled: bool) -> SessionCredentials {
    let issued = SessionCredentials {
        gateway_key: mint("kgw"),
        mcp_token: mint("kmcp"),
    };
    maps.owner
        .insert(issued.gateway_key.clone(), owner.to_owned());
    maps.owner
        .insert(issued.mcp_token.clone(), owner.to_owned());
    maps.by_session.insert(
        owner.to_owned(),
        Issued {
            credentials: issued.clone(),
            last_used: Instant::now(),
            pooled,
        },
    );
    issued
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_their_session_and_their_kind_only_until_revoked() {
        let registry = Credentials::new();
        let a = registry.for_session("a");
        assert_eq!(registry.for_session("a"), a, "minted once");
        let b = registry.for_session("b");
        assert_ne!(a.gateway_key, b.gateway_key);
        assert_eq!(
            registry.session_for_gateway_key(&a.gateway_key).as_deref(),
            Some("a")
        );
        assert_eq!(
            registry.session_for_mcp_token(&b.mcp_token).as_deref(),
            Some("b")
        );
        // A gateway key is no MCP token.
        assert_eq!(registry.session_for_mcp_token(&a.gateway_key), None);
        assert_eq!(registry.session_for_gateway_key("kgw_forged"), None);
        registry.revoke("a");
        assert_eq!(registry.session_for_gateway_key(&a.gateway_key), None);
        assert_eq!(registry.session_for_mcp_token(&a.mcp_token), None);
        assert_eq!(registry.len(), 1);
        assert_ne!(registry.for_session("a"), a, "a new session gets new ones");
        assert!(registry.idle_sessions(Duration::from_secs(3600)).is_empty());
        assert_eq!(registry.idle_sessions(Duration::ZERO).len(), 2);
    }

    #[test]
    fn a_pool_slots_credentials_become_the_claiming_sessions_only() {
        let registry = Credentials::new();
        let slot = registry.for_pool_slot("pool.1");
        let other = registry.for_pool_slot("pool.2");
        assert!(
            registry.idle_sessions(Duration::ZERO).is_empty(),
            "a pooled slot is never idle"
        );
        let minted = registry.for_session("s");
        assert_eq!(
            registry.gateway_key_holder(&slot.gateway_key),
            Some(KeyHolder::PoolSlot("pool.1".into()))
        );
        assert_eq!(registry.rebind("pool.1", "s"), Some(slot.clone()));
        assert_eq!(
            registry.gateway_key_holder(&slot.gateway_key),
            Some(KeyHolder::Session("s".into()))
        );
        // The slot's key and token name the session now, and only it.
        assert_eq!(
            registry
                .session_for_gateway_key(&slot.gateway_key)
                .as_deref(),
            Some("s")
        );
        assert_eq!(
            registry.session_for_mcp_token(&slot.mcp_token).as_deref(),
            Some("s")
        );
        assert_eq!(registry.for_session("s"), slot);
        // What the session held before is gone; the slot holds nothing.
        assert_eq!(registry.session_for_gateway_key(&minted.gateway_key), None);
        assert_eq!(registry.rebind("pool.1", "t"), None);
        assert_eq!(
            registry
                .session_for_gateway_key(&other.gateway_key)
                .as_deref(),
            Some("pool.2")
        );
        registry.revoke("pool.2");
        assert_eq!(registry.session_for_mcp_token(&other.mcp_token), None);
        assert_eq!(registry.idle_sessions(Duration::ZERO), vec!["s".to_owned()]);
    }
}
