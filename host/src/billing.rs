//! Who pays for a model call, and with which key: the gateway asks
//! [`ProviderKeys`] per call (it is the gateway's [`CallRouter`]).
//!
//! A session's org may have its own key for a provider (BYOK, sealed at
//! rest by [`crate::byok`]). A call in the Anthropic shape goes out with the
//! org's `anthropic` key, one in the OpenAI shape with its `openai` key, else
//! its `openrouter` key — to that provider's base URL (configurable, so an
//! operator can point one at a proxy and tests at a fake provider). An org
//! without a key for the call's shape falls back to the platform's upstream
//! only if the operator configured one, else to the offline model.
//!
//! The key is unsealed for the one request and lives in the upstream
//! request's header only: never in a harness's environment, the jail, a log
//! line (`Upstream`'s `Debug` leaves it out) or an answer.

use std::collections::BTreeMap;

use secrecy::ExposeSecret;

use crate::byok::{Byok, Provider};
use crate::gateway::{CallRouter, Upstream, UpstreamKind};
use crate::store::Store;

/// Each provider's API base URL (no trailing `/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUrls(pub BTreeMap<Provider, String>);

impl Default for ProviderUrls {
    fn default() -> Self {
        Self(BTreeMap::from([
            (Provider::Anthropic, "https://api.anthropic.com".into()),
            (Provider::Openai, "https://api.openai.com".into()),
            (Provider::Openrouter, "https://openrouter.ai/api".into()),
        ]))
    }
}

/// The gateway's per-call router: the session's org's own key.
pub struct ProviderKeys {
    store: Store,
    byok: Byok,
    urls: ProviderUrls,
}

impl ProviderKeys {
    /// A router over the sealed keys of `byok`.
    pub fn new(store: Store, byok: Byok, urls: ProviderUrls) -> Self {
        Self { store, byok, urls }
    }
}

impl CallRouter for ProviderKeys {
    fn upstream_for(&self, session: &str, kind: UpstreamKind) -> Result<Option<Upstream>, String> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::error!("cannot read the org's provider key: {e}");
            "the org's provider key cannot be read; try again".to_owned()
        };
        let Some(org_id) = self
            .store
            .session(session)
            .map_err(|e| unavailable(&e))?
            .and_then(|record| record.scope)
            .map(|scope| scope.org_id)
        else {
            return Ok(None);
        };
        let providers: &[Provider] = match kind {
            UpstreamKind::Anthropic => &[Provider::Anthropic],
            UpstreamKind::Openai => &[Provider::Openai, Provider::Openrouter],
        };
        for provider in providers {
            let Some(key) = self
                .byok
                .key_for(&org_id, *provider)
                .map_err(|e| unavailable(&e))?
            else {
                continue;
            };
            let Some(base_url) = self.urls.0.get(provider) else {
                continue;
            };
            return Ok(Some(Upstream {
                kind,
                base_url: base_url.clone(),
                api_key: key.expose_secret().to_owned(),
            }));
        }
        Ok(None)
    }
}
