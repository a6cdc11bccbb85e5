//! One place decides what an attempt's result means.

use std::time::{Duration, SystemTime};

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth retrying later: SMTP 4xx, HTTP 429/5xx, timeouts, refused
    /// connections. `retry_after` is the provider's own hint, if it gave one.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Never worth retrying: SMTP 5xx, HTTP 4xx other than 408/429.
    Permanent(String),
    /// Permanent, and the address itself is bad (SMTP 550/551/553 or an
    /// enhanced status 5.1.x): a hard bounce, which suppresses the address.
    HardBounce(String),
    /// No provider could be tried (every circuit breaker is open): nothing
    /// is wrong with the message, it waits.
    Unavailable(String),
}

impl Outcome {
    pub fn transient(reason: impl Into<String>) -> Outcome {
        Outcome::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Counts against the provider's health (its circuit breaker): a
    /// recipient's own problem does not.
    pub fn is_provider_failure(&self) -> bool {
        matches!(self, Outcome::Transient { .. } | Outcome::Unavailable(_))
    }
}

pub fn classify_smtp(e: &lettre::transport::smtp::Error) -> Outcome {
    let reason = e.to_string();
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        if is_bad_mailbox(&code, &reason) {
            Outcome::HardBounce(reason)
        } else {
            Outcome::Permanent(reason)
        }
    } else {
        // 4xx replies, timeouts, connection and TLS failures: the message was
        // not accepted, so trying again later is safe and may succeed.
        Outcome::transient(reason)
    }
}

/// RFC 5321 550 (mailbox unavailable), 551 (user not local), 553 (mailbox
/// name not allowed), or RFC 3463's 5.1.x (addressing status) in the text.
fn is_bad_mailbox(code: &str, text: &str) -> bool {
    matches!(code, "550" | "551" | "553")
        || text
            .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
            .any(|w| w.starts_with("5.1.") && w.len() > 4)
}

/// An HTTP provider's answer. `retry_after` is the raw `Retry-After` value.
pub fn classify_http(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    let snippet: String = body.chars().take(200).collect();
    let reason = format!("HTTP {status}: {}", snippet.trim());
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Transient {
            reason,
            retry_after: retry_after.and_then(parse_retry_after),
        },
        _ => Outcome::Permanent(reason),
    }
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110 10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified_by_what_a_retry_could_change() {
        assert_eq!(classify_http(201, None, ""), Outcome::Delivered);
        assert!(matches!(
            classify_http(429, Some("7"), "slow down"),
            Outcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify_http(503, None, ""),
            Outcome::Transient {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify_http(400, None, "bad To"),
            Outcome::Permanent(r) if r.contains("bad To")
        ));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&soon).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_bad_mailbox_is_a_hard_bounce() {
        assert!(is_bad_mailbox("550", "550 5.1.1 user unknown"));
        assert!(is_bad_mailbox("554", "554 5.1.2 bad destination system"));
        assert!(!is_bad_mailbox("554", "554 5.7.1 message refused as spam"));
    }
}
