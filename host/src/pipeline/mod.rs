//! Running a campaign: intake → segment → personalise → send, each stage a
//! worker on its own queue. `run` wires them on one machine with the
//! embedded queue and store; the workers themselves only see the `Queue`,
//! `Store` and `Transport` traits.

pub mod convert;
pub mod counters;
pub mod envelope;
pub mod intake;
pub mod prepare;
pub mod preview;
pub mod run;
pub mod stages;
pub mod worker;

pub use run::{RunOptions, RunReport, run};
