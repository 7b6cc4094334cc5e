//! Translation between the two wire shapes the gateway speaks, so an app's
//! harness and its model provider need not agree on one: Claude Code
//! (Anthropic Messages) can run on an OpenAI-compatible provider, and
//! OpenCode (OpenAI Chat Completions) on Anthropic.
//!
//! **The model name picks the provider** ([`pick`]): `openai/<model>`,
//! `openrouter/<model>` and `anthropic/<model>` name one, and the prefix is
//! stripped before the request goes out; a bare name keeps the request's
//! own shape. The choice lives in the app's own config (the model its agent
//! or harness asks for), so no platform setting has to know which harness
//! an app runs.
//!
//! When the picked provider's shape differs from the request's, the
//! request is translated one way (`request/`) and the answer back — a
//! unary answer whole (`response.rs`), an SSE answer event by event as it
//! passes (`stream.rs`): the gateway's shared SSE reader splits the
//! provider's bytes into events, each is metered *in the provider's shape*
//! (what the provider reported is what is counted, once) and then rewritten
//! into the caller's events. Nothing is buffered but the event being read
//! and, per open tool call, nothing at all: argument fragments go on as
//! they come.
//!
//! What does not carry over is dropped rather than faked: reasoning from
//! an OpenAI-compatible provider (Anthropic's thinking blocks need a
//! provider signature), server tools without a JSON schema, and sampling
//! options one API lacks.

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;

use crate::byok::Provider;

use super::UpstreamKind;

/// The provider a model name names, and the name the provider knows it by:
/// `openai/gpt-4o-mini` → (OpenAI, `gpt-4o-mini`); a name without a known
/// prefix is (`None`, the name).
pub fn pick(model: &str) -> (Option<Provider>, &str) {
    if let Some((prefix, rest)) = model.split_once('/')
        && !rest.is_empty()
        && let Ok(provider) = prefix.parse::<Provider>()
    {
        return (Some(provider), rest);
    }
    (None, model)
}

/// The wire shape `provider` speaks.
pub fn shape_of(provider: Provider) -> UpstreamKind {
    match provider {
        Provider::Anthropic => UpstreamKind::Anthropic,
        Provider::Openai | Provider::Openrouter => UpstreamKind::Openai,
    }
}

/// OpenAI's `finish_reason` as Anthropic's `stop_reason`.
pub(crate) fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// The error type the caller's shape uses for an HTTP status (both APIs
/// share most names).
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests;
