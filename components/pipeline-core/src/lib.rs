//! The pure logic of Squall's three default stages: segment rules (CEL),
//! message templates (Liquid) and provider requests (MIME, SMS, webhook).
//!
//! Architecture invariant: nothing here does I/O. The same code is compiled
//! into the `wasm32-wasip2` components and natively into the host's benchmark
//! baseline, so the two measure exactly the same work.

pub mod diagnostic;
pub mod ids;
pub mod message;
pub mod record;
pub mod segment;
pub mod sms;
pub mod template;
mod template_scan;

pub use diagnostic::Diagnostic;
pub use record::{Batch, Record, Value};
