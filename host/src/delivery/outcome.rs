//! One place decides what an attempt's result means.

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth retrying later: SMTP 4xx, timeouts, refused connections.
    Transient(String),
    /// Never worth retrying: SMTP 5xx.
    Permanent(String),
}

pub fn classify_smtp(e: &lettre::transport::smtp::Error) -> Outcome {
    let reason = e.to_string();
    if e.is_permanent() {
        Outcome::Permanent(reason)
    } else {
        // 4xx replies, timeouts, connection and TLS failures: the message was
        // not accepted, so trying again later is safe and may succeed.
        Outcome::Transient(reason)
    }
}
