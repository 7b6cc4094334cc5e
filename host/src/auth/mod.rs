//! Orgs, projects, API keys, session tokens, embed keys (being built).
