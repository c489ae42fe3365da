//! Support for the end-to-end tests: build the real artifacts once, start
//! `mist` on port 0, and talk to it with timeouts everywhere.
//!
//! Every wait here is bounded: a test that would hang fails instead, with
//! the server's log in the message.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

pub mod attack;
pub mod backplane;
pub mod browser;
pub mod client;
pub mod devtools;
pub mod jwt;
pub mod nats;
pub mod postgres;
pub mod prometheus;
pub mod redis;
pub mod server;
pub mod service;
pub mod spy;
pub mod tls;
pub mod web;

pub use client::Client;
pub use server::{artifacts, Artifacts, MistServer};

use std::time::Duration;

/// How long any single expected event may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
