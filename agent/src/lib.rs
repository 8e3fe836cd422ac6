//! berth: a host agent that runs containers, traces them with eBPF and explains what port
//! mapping costs. The binary (`src/main.rs`) is a thin clap front end over this library.
//!
//! Data flows one way: collectors ([`collect`], reading the host through `probes`, `cgroup`,
//! `runtime`, `net`, `discover`) -> [`model::Snapshot`] -> readers (`metrics`, `api`,
//! `diagnose`, `ui`), which never touch the host. Changes go through `runtime` (lifecycle),
//! `cgroup` (limits), `net` and `probes` (attach). See DESIGN.md in the shared docs.

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod collect;
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
pub mod notify;
pub mod probes;
pub mod runtime;
pub mod ui;
