//! Integration tests: one binary, a module per area (wasmtime's
//! `tests/all` layout). Guest fixtures are built from source on first use
//! (`support::plugins`).

mod api_guard;
mod chat_page;
mod cli;
mod end_user_homes;
mod gateway;
mod harnesses;
mod jail;
mod managed_agents;
mod mcp;
mod metering;
mod observability;
mod openai_adapters;
mod operator_cli;
mod plugin_runtime;
mod pool;
mod python_mcp;
mod releases;
mod reliability;
mod sessions;
mod setup;
mod support;
mod tenancy;
mod translation;
mod webhooks;
