//! `sse-hub`: the reference server. The SSE gateway runs in-process (no HTTP
//! hop between gateway and backend) with the `sse-backend` toolkit, and the
//! services of docs/BACKEND.md live on top of it:
//!
//! * [`leases`] over [`dnsmasq`]: DHCP leases, pools, and change events
//!   (`lease_added` / `lease_updated` / `lease_removed` / `lease_expired`,
//!   `data_changed`) from a file watcher, a notify endpoint and an expiry timer;
//! * [`demo_tasks`]: the start route and built-in tasks for the toolkit's task runner;
//! * version notices (the toolkit's `VersionService`, pushed through [`internal`],
//!   and from the watched [`version_file`]);
//! * [`device_logs`] from [`mqtt`] or HTTP, to subscribed streams only;
//! * rotation nudges ([`internal::Rotation`]);
//! * a dashboard page at `/` (embedded with `include_str!`).
//!
//! [`app`] is the only place that wires them; [`config`] the only place that
//! reads settings, through a lookup (the binary owns the command line).
//! Invariants: no std lock across an `.await`; every service sends through
//! the toolkit's `ConnectionManager`, never to the gateway directly.

pub mod app;
pub mod config;
pub mod demo_data;
pub mod demo_tasks;
pub mod device_logs;
pub mod dnsmasq;
pub mod endpoints;
pub mod internal;
pub mod leases;
pub mod metrics;
pub mod mqtt;
pub mod version_file;

pub use app::{RunningHub, STREAM_PATH, local_url, start};
pub use config::{HubConfig, HubConfigError, NudgeConfig};
