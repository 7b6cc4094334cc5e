//! Published releases of projects (being built).
