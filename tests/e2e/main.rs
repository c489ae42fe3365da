//! End-to-end tests: the real `mist` binary and plugin libraries, real
//! sockets, no mocks. `mist_e2e::artifacts()` builds them once per run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod access;
mod adversarial;
mod auth;
mod bench;
mod browser;
mod cli;
mod cluster;
mod cluster_ha;
mod cluster_trust;
mod example_plugin;
mod http;
mod jwt;
mod ledger;
mod listeners;
mod ops;
mod plugins;
mod startup;
mod stores;
mod tcp;
mod tls;
mod ws;
