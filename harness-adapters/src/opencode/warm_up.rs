//! The warm-up of a pooled server: its per-directory bootstrap done by
//! read-only requests, and one throwaway exchange in a session of its own,
//! deleted after (see [`Harness::prestart`]).

use super::*;

impl OpencodeHarness {
    /// The warm-up of a pooled server (see [`Harness::prestart`]): the
    /// per-directory bootstrap OpenCode 1.18.33 otherwise leaves to the
    /// first prompt, made by the read-only endpoints that need it.
    ///
    /// Its instance of a directory loads lazily: listening, `/event` and
    /// `POST /session` do not load the provider SDK (`/config/providers`:
    /// ~1.2 s of the first prompt's ~1.9 s unjailed on a quiet machine),
    /// the agents, the MCP clients or the tool registry
    /// (`/experimental/tool` builds the tool definitions the model gets for
    /// this provider and model, MCP tools included). None of them calls
    /// the model, runs a tool or touches the conversation. No request names
    /// `?directory=`: like the turns, they go to the instance of the
    /// server's own working directory, the slot's workspace at its path in
    /// the jail — which a claim does not change (the host renames the
    /// directory outside the jail; the jail's bind mount keeps the path).
    pub(super) async fn warm_up(
        &self,
        server: &OpencodeServer,
        model: &str,
    ) -> Result<(), TurnFailure> {
        let tools = format!(
            "/experimental/tool?provider={}&model={}",
            query_value(PROVIDER_ID),
            query_value(model)
        );
        for path in [
            "/config/providers",
            "/agent",
            "/mcp",
            "/command",
            "/experimental/tool/ids",
            tools.as_str(),
        ] {
            let (status, answer) = self
                .client
                .json("GET", &format!("{}{path}", server.base), None)
                .await
                .map_err(TurnFailure::harness)?;
            if status >= 300 {
                return Err(TurnFailure::harness(format!(
                    "opencode's warm-up failed: GET {path}: {status} {answer}"
                )));
            }
        }
        Ok(())
    }

    /// The second half of a pooled server's warm-up: one throwaway
    /// exchange in an OpenCode session of its own, deleted after.
    ///
    /// An OpenCode 1.18.33 server's first prompt costs ~300 ms that a
    /// later one — in any of its sessions — does not (the first run of its
    /// prompt loop; the read-only endpoints of [`Self::warm_up`] do not
    /// reach it). So the warm-up prompts once, in a session that is not
    /// the conversation the pool hands over: its model call is the pool
    /// slot's, which the gateway answers itself (a fixed `ok`, no
    /// provider, nothing metered), and the session is deleted, so the
    /// claiming session's conversation holds nothing of it (the pool test
    /// asserts it). Apps with plugins skip this (see [`app_has_no_plugins`]).
    pub(super) async fn warm_up_conversation(
        &self,
        server: &mut OpencodeServer,
        model: &str,
    ) -> Result<(), TurnFailure> {
        let base = server.base.clone();
        let exchange = async {
            let (status, created) = self
                .client
                .json(
                    "POST",
                    &format!("{base}/session"),
                    Some(&json!({ "title": "karta warm-up" })),
                )
                .await?;
            let Some(id) = created["id"].as_str().filter(|_| status < 300) else {
                return Err(format!("POST /session: {status} {created}"));
            };
            let body = prompt_body(model, WARM_UP_MESSAGE);
            let (status, answer) = self
                .client
                .json("POST", &format!("{base}/session/{id}/message"), Some(&body))
                .await?;
            if status >= 300 {
                return Err(format!("POST /session/{id}/message: {status} {answer}"));
            }
            let (status, answer) = self
                .client
                .json("DELETE", &format!("{base}/session/{id}"), None)
                .await?;
            if status >= 300 {
                return Err(format!("DELETE /session/{id}: {status} {answer}"));
            }
            Ok(())
        };
        match tokio::time::timeout(WARM_UP_TIMEOUT, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(TurnFailure::harness(format!(
                    "opencode's warm-up exchange failed: {message}"
                )));
            }
            Err(_) => {
                return Err(TurnFailure::harness(format!(
                    "opencode's warm-up exchange took more than {}s",
                    WARM_UP_TIMEOUT.as_secs()
                )));
            }
        }
        // Its events are no turn's.
        while server.events.try_recv().is_ok() {}
        Ok(())
    }
}
