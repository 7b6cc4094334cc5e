//! Embed keys: publishable `pk_live_…` keys bound to one project and a
//! list of origins, traded by a web page for a short-lived `write` session
//! token (`POST /v1/embed/session-tokens`).
//!
//! The key sits in a page's source, so it is not a secret; what limits it
//! is the `Origin` check (a browser sets `Origin` and a page cannot forge
//! it) and the short life of the token it yields. Origins are compared
//! after normalising both sides: scheme and host lowercased, a default
//! port (`:443` for https, `:80` for http) dropped — browsers never send
//! one, so a stored `https://a.com:443` would otherwise never match.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{
    Auth, AuthError, EmbedKeyInfo, MintedToken, ProjectRef, Scope, index_prefix, is_random_key,
    new_id, now_rfc3339, random_base62, read, read_id, update,
};

/// What every embed key starts with.
const EMBED_KEY_PREFIX: &str = "pk_live_";

/// Random characters after the prefix.
const EMBED_KEY_RANDOM_CHARS: usize = 32;

/// Most origins one key may list.
const MAX_ORIGINS: usize = 64;

/// An origin in canonical form (`scheme://host[:port]`, lowercase, no
/// default port), or why it is not one.
pub(super) fn normalize_origin(origin: &str) -> Result<String, String> {
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or("expected scheme://host[:port]")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return Err("the scheme must be http or https".into()),
    };
    if rest.contains(['/', '?', '#', '@']) {
        return Err("only scheme://host[:port]: no path, query, fragment or user".into());
    }
    // An IPv6 literal keeps its colons inside brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    let host = host.to_ascii_lowercase();
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if !host_ok {
        return Err("the host must be a domain name or an IP address".into());
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(port) if port == default_port => Ok(format!("{scheme}://{host}")),
        Some(port) => match port.parse::<u16>() {
            Ok(n) if n > 0 && !port.starts_with('0') => Ok(format!("{scheme}://{host}:{port}")),
            _ => Err("the port must be 1 to 65535".into()),
        },
    }
}

impl Auth {
    /// Makes an embed key for one of an org's projects, usable from the
    /// given origins (`scheme://host[:port]`, http or https, no path; 1 to
    /// 64 of them). [`AuthError::NotFound`] unless the project belongs to
    /// the org; [`AuthError::BadInput`] (`allowed_origins`) for a malformed
    /// origin.
    pub fn create_embed_key(
        &self,
        org_id: &str,
        project_id: &str,
        allowed_origins: Vec<String>,
    ) -> Result<EmbedKeyInfo, AuthError> {
        if allowed_origins.is_empty() || allowed_origins.len() > MAX_ORIGINS {
            return Err(AuthError::bad_input(
                "allowed_origins",
                format!("list 1 to {MAX_ORIGINS} origins"),
            ));
        }
        let mut origins = Vec::with_capacity(allowed_origins.len());
        for origin in &allowed_origins {
            let normal = normalize_origin(origin).map_err(|why| {
                AuthError::bad_input("allowed_origins", format!("{origin:?}: {why}"))
            })?;
            if !origins.contains(&normal) {
                origins.push(normal);
            }
        }
        self.org_project(org_id, project_id)?;
        let info = EmbedKeyInfo {
            id: new_id("emb"),
            org_id: org_id.to_owned(),
            project_id: project_id.to_owned(),
            key: format!(
                "{EMBED_KEY_PREFIX}{}",
                random_base62(&self.inner.rng, EMBED_KEY_RANDOM_CHARS)?
            ),
            allowed_origins: origins,
            created_at: now_rfc3339(),
            revoked_at: None,
        };
        let json = serde_json::to_vec(&info)?;
        let id = info.id.as_bytes();
        let by_org = self.ordered_key(org_id)?;
        let t = self.trees();
        (&t.embed_keys, &t.embed_key_values, &t.org_embed_keys).transaction(
            |(keys, values, by_org_tree)| {
                keys.insert(id, json.as_slice())?;
                values.insert(info.key.as_bytes(), id)?;
                by_org_tree.insert(by_org.as_slice(), id)?;
                Ok::<_, ConflictableTransactionError<AuthError>>(())
            },
        )?;
        self.flush()?;
        Ok(info)
    }

    /// An org's embed keys (or one project's), revoked ones included,
    /// oldest first.
    pub fn embed_keys(
        &self,
        org_id: &str,
        project_id: Option<&str>,
    ) -> Result<Vec<EmbedKeyInfo>, AuthError> {
        let mut keys = Vec::new();
        for row in self
            .trees()
            .org_embed_keys
            .scan_prefix(index_prefix(&[org_id]))
        {
            let (_, id) = row?;
            if let Some(info) = read::<EmbedKeyInfo>(&self.trees().embed_keys, &id)?
                && project_id.is_none_or(|p| p == info.project_id)
            {
                keys.push(info);
            }
        }
        Ok(keys)
    }

    /// Revokes an org's embed key (again: a no-op that answers the key).
    /// Another org's key is [`AuthError::NotFound`].
    pub fn revoke_embed_key(&self, org_id: &str, key_id: &str) -> Result<EmbedKeyInfo, AuthError> {
        let info = update(
            &self.trees().embed_keys,
            key_id.as_bytes(),
            |info: &mut EmbedKeyInfo| {
                if info.org_id != org_id {
                    return Err(AuthError::NotFound);
                }
                if info.revoked_at.is_some() {
                    return Ok(false);
                }
                info.revoked_at = Some(now_rfc3339());
                Ok(true)
            },
        )?
        .ok_or(AuthError::NotFound)?;
        self.flush()?;
        Ok(info)
    }

    /// Trades an embed key for a `write` session token of its project
    /// (`POST /v1/embed/session-tokens`).
    ///
    /// The key must exist ([`AuthError::Invalid`]) and not be revoked
    /// ([`AuthError::Revoked`]); `origin`, the request's `Origin` header,
    /// must be present and in the key's list
    /// ([`AuthError::OriginNotAllowed`]). With an `identity_token` that
    /// verifies against the project's identity secret, the token's `sub`
    /// is its end user id; one that does not is [`AuthError::BadIdentity`].
    pub fn mint_embed_token(
        &self,
        embed_key: &str,
        origin: Option<&str>,
        identity_token: Option<&str>,
    ) -> Result<MintedToken, AuthError> {
        if !is_random_key(embed_key, EMBED_KEY_PREFIX, EMBED_KEY_RANDOM_CHARS) {
            return Err(AuthError::Invalid);
        }
        let t = self.trees();
        let id = read_id(&t.embed_key_values, embed_key.as_bytes())?.ok_or(AuthError::Invalid)?;
        let info: EmbedKeyInfo = read(&t.embed_keys, id.as_bytes())?.ok_or(AuthError::Invalid)?;
        if info.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let origin = origin
            .and_then(|origin| normalize_origin(origin).ok())
            .ok_or(AuthError::OriginNotAllowed)?;
        if !info.allowed_origins.contains(&origin) {
            return Err(AuthError::OriginNotAllowed);
        }
        // A key whose project is gone is as good as unknown.
        let record =
            self.org_project(&info.org_id, &info.project_id)
                .map_err(|error| match error {
                    AuthError::NotFound => AuthError::Invalid,
                    other => other,
                })?;
        let sub = identity_token
            .map(|token| Self::verify_identity_token(&record, token))
            .transpose()?;
        self.mint_token(
            &info.org_id,
            &ProjectRef::from(&record.project),
            Scope::Write,
            sub.as_deref(),
            None,
            Some(&info.id),
        )
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::testing::{auth, org_and_project};
    use super::*;

    #[test]
    fn origins_are_normalised_or_refused() {
        let good = [
            ("https://example.com", "https://example.com"),
            ("HTTPS://Example.COM", "https://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://127.0.0.1:80", "http://127.0.0.1"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("https://a-b.example.co.uk", "https://a-b.example.co.uk"),
        ];
        for (input, normal) in good {
            assert_eq!(normalize_origin(input).as_deref(), Ok(normal), "{input}");
        }
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://example.com?q",
            "https://user@example.com",
            "https://",
            "https://exa mple.com",
            "https://example..com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:",
            "null",
            "*",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn embed_keys_mint_write_tokens_from_allowed_origins() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let info = auth
            .create_embed_key(
                &org.id,
                &project.id,
                vec!["https://Shop.example.com".into()],
            )
            .expect("key");
        assert!(info.id.starts_with("emb_"));
        assert!(
            is_random_key(&info.key, EMBED_KEY_PREFIX, EMBED_KEY_RANDOM_CHARS),
            "{}",
            info.key
        );
        assert_eq!(info.allowed_origins, ["https://shop.example.com"]);

        let minted = auth
            .mint_embed_token(&info.key, Some("https://shop.example.com"), None)
            .expect("mint");
        let principal = auth.authenticate(&minted.token).expect("authenticate");
        assert_eq!(principal.scope, Scope::Write);
        assert_eq!(principal.project.map(|p| p.id), Some(project.id.clone()));
        assert_eq!(principal.sub, None);

        for origin in [
            Some("https://evil.example.com"),
            Some("http://shop.example.com"),
            Some("garbage"),
            None,
        ] {
            assert!(
                matches!(
                    auth.mint_embed_token(&info.key, origin, None),
                    Err(AuthError::OriginNotAllowed)
                ),
                "{origin:?}"
            );
        }
        let mut wrong = info.key.clone();
        let last = if wrong.ends_with('a') { "b" } else { "a" };
        wrong.replace_range(wrong.len() - 1.., last);
        for key in ["pk_live_nope", wrong.as_str(), ""] {
            assert!(
                matches!(
                    auth.mint_embed_token(key, Some("https://shop.example.com"), None),
                    Err(AuthError::Invalid)
                ),
                "{key:?}"
            );
        }
    }

    #[test]
    fn identity_tokens_set_sub() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let allowed = "https://shop.example.com";
        let origin = Some(allowed);
        let info = auth
            .create_embed_key(&org.id, &project.id, vec![allowed.into()])
            .expect("key");
        let secret = auth.identity_secret(&org.id, &project.id).expect("secret");
        let identity = Auth::identity_token(secret.expose_secret(), "customer-7");
        let minted = auth
            .mint_embed_token(&info.key, origin, Some(&identity))
            .expect("mint");
        let principal = auth.authenticate(&minted.token).expect("authenticate");
        assert_eq!(principal.sub.as_deref(), Some("customer-7"));

        let forged = Auth::identity_token(&"11".repeat(32), "customer-7");
        let error = auth
            .mint_embed_token(&info.key, origin, Some(&forged))
            .expect_err("tampered");
        assert!(matches!(error, AuthError::BadIdentity), "{error:?}");
        assert_eq!(error.code(), "invalid_identity_token");
    }

    #[test]
    fn revoked_embed_keys_are_refused() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let origin = "https://shop.example.com";
        let info = auth
            .create_embed_key(&org.id, &project.id, vec![origin.into()])
            .expect("key");
        let stranger = auth.create_org("beta", None).expect("org");
        assert!(matches!(
            auth.revoke_embed_key(&stranger.id, &info.id),
            Err(AuthError::NotFound)
        ));
        let revoked = auth.revoke_embed_key(&org.id, &info.id).expect("revoke");
        assert!(revoked.revoked_at.is_some());
        assert!(matches!(
            auth.mint_embed_token(&info.key, Some(origin), None),
            Err(AuthError::Revoked)
        ));
    }

    #[test]
    fn embed_keys_are_listed_by_org_and_project() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let sales = auth.create_project(&org.id, "sales").expect("project");
        let origins = || vec!["https://a.example".to_owned()];
        let first = auth
            .create_embed_key(&org.id, &project.id, origins())
            .expect("key");
        let second = auth
            .create_embed_key(&org.id, &sales.id, origins())
            .expect("key");
        let ids = |keys: Vec<EmbedKeyInfo>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
        assert_eq!(
            ids(auth.embed_keys(&org.id, None).expect("list")),
            [first.id.clone(), second.id.clone()]
        );
        assert_eq!(
            ids(auth.embed_keys(&org.id, Some(&sales.id)).expect("list")),
            [second.id]
        );
        let stranger = auth.create_org("beta", None).expect("org");
        assert!(
            auth.embed_keys(&stranger.id, None)
                .expect("list")
                .is_empty()
        );
        assert!(matches!(
            auth.create_embed_key(&stranger.id, &project.id, origins()),
            Err(AuthError::NotFound)
        ));
        for bad in [vec![], vec!["https://a.example/path".to_owned()]] {
            assert!(matches!(
                auth.create_embed_key(&org.id, &project.id, bad),
                Err(AuthError::BadInput {
                    field: "allowed_origins",
                    ..
                })
            ));
        }
    }
}
