//! `backstop serve` (docs/web.md): a dashboard, a JSON API and Prometheus metrics over the job
//! runner's SQLite state, read-only.
//!
//! - [`model`]: what the pages and the API show, read from the state on a blocking thread;
//! - [`api`]: the JSON API's and `/metrics`' renderings of it;
//! - [`overdue`]: the scheduler's health and the jobs that are late, and why;
//! - [`pages`]: the server-rendered pages;
//! - [`auth`]: who may see them: anyone on a loopback address when no credentials are set;
//!   else an API token for JSON and metrics, a password and a session cookie for pages, a CSRF
//!   token on every form;
//! - [`tenants`]: OpenNebula users who log in with their own credentials, checked by oned,
//!   and see only their VMs.

pub mod api;
pub mod auth;
mod error;
pub mod model;
pub mod overdue;
pub mod pages;
pub mod server;
pub mod tenants;

pub use error::Error;
pub use server::{Options, serve};
