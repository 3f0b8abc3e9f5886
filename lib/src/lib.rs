//! Layerline's core: the pure domain, the event log and read models on SQLite or PostgreSQL,
//! the services that turn commands into appended events, configuration and the HTTP API.
//!
//! This crate defines the ports (`store::EventStore`, `store::ReadModels`) and never depends
//! on the job queue; the `layerline-jobs` crate builds on it.

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
