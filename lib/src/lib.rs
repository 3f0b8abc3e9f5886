//! Layerline's core: the pure domain, the event log and read models on SQLite or PostgreSQL,
//! the services that turn commands into appended events, configuration and the HTTP API.
//!
//! This crate defines the ports (`store::EventStore`, `store::ReadModels`) and never depends
//! on the job queue; the `layerline-jobs` crate builds on it.

/// The commit this build is of (12 hex digits), or `unknown` outside a git checkout.
pub const COMMIT: &str = env!("LAYERLINE_COMMIT");
/// That commit's date (`YYYY-MM-DD`), or `unknown`.
pub const COMMIT_DATE: &str = env!("LAYERLINE_COMMIT_DATE");
/// What `layerline --version` prints after the name: `0.1.0 (commit 1a2b3c4d5e6f, 2026-12-08)`.
pub const VERSION: &str = env!("LAYERLINE_VERSION");

pub mod archive;
pub mod config;
pub mod domain;
pub mod http;
pub mod importer;
pub mod jobs;
pub mod metric;
pub mod oci;
pub mod service;
pub mod store;
