//! berth: a host agent that runs containers, traces them with eBPF and explains what port
//! mapping costs. The binary (`src/main.rs`) is a thin clap front end over this library.
//!
//! Data flows one way: collectors (`probes`, `cgroup`) -> [`model::Snapshot`] -> readers
//! (`metrics`, `api`). See DESIGN.md at the repository's shared docs for the whole picture.

pub mod api;
pub mod bench;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod diagnose;
pub mod discover;
pub mod fsutil;
pub mod history;
pub mod image;
pub mod metrics;
pub mod model;
pub mod net;
pub mod probes;
pub mod runtime;
pub mod ui;
