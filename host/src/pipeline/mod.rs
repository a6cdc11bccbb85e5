//! Running a campaign: intake → segment → personalise → send, each stage a
//! worker on its own queue. `run` wires them on one machine with the
//! embedded queue and store; `launch`, `service` (one stage's worker
//! process) and `status` do the same across machines with the backends a
//! `squall.toml` names. The workers themselves only see the `Queue`,
//! `Store` and `Transport` traits.

pub mod backends;
pub mod control;
pub mod convert;
pub mod counters;
pub mod dry_run;
pub mod envelope;
pub mod intake;
pub mod launch;
pub mod prepare;
pub mod preview;
pub mod recovery;
pub mod report;
pub mod run;
pub mod service;
pub mod stages;
pub mod stats;
pub mod status;
pub mod transports;
pub mod validate;
pub mod worker;

pub use run::{RunOptions, RunReport, run};
