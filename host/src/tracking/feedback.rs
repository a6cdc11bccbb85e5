//! Provider feedback: Amazon SES notifications (delivered through SNS) and
//! Squall's own generic JSON format, read into bounces, complaints and
//! deliveries by address and Message-ID.

use serde::Deserialize;

/// One thing a provider tells us about one recipient of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub kind: FeedbackKind,
    pub address: String,
    /// Our message id, when the provider names the message (SES gives the
    /// `Message-ID` header we set: `<id@domain>`).
    pub message_id: Option<String>,
    pub detail: String,
    /// Unix milliseconds, when the provider says.
    pub at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackKind {
    /// Permanent: the address is suppressed.
    HardBounce,
    /// Temporary (mailbox full, ...): counted, not suppressed.
    SoftBounce,
    /// Marked as spam: suppressed.
    Complaint,
    Delivery,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesNotification {
    /// `notificationType` (identity notifications) or `eventType` (event
    /// publishing through a configuration set): the same shapes.
    #[serde(alias = "eventType")]
    notification_type: String,
    mail: SesMail,
    bounce: Option<SesBounce>,
    complaint: Option<SesComplaint>,
    delivery: Option<SesDelivery>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesMail {
    #[serde(default)]
    common_headers: Option<SesCommonHeaders>,
    #[serde(default)]
    headers: Vec<SesHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesCommonHeaders {
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SesHeader {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesBounce {
    bounce_type: String,
    #[serde(default)]
    bounce_sub_type: String,
    bounced_recipients: Vec<SesBouncedRecipient>,
    timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesBouncedRecipient {
    email_address: String,
    #[serde(default)]
    diagnostic_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesComplaint {
    complained_recipients: Vec<SesAddress>,
    #[serde(default)]
    complaint_feedback_type: Option<String>,
    timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesAddress {
    email_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesDelivery {
    recipients: Vec<String>,
    timestamp: Option<String>,
}

fn millis(ts: &Option<String>) -> Option<i64> {
    ts.as_deref()
        .and_then(crate::schedule::clock::parse_rfc3339_ms)
}

/// `<0123…@example.com>` → `0123…`.
pub fn message_id_from_header(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches('<').trim_end_matches('>');
    let local = v.split('@').next()?;
    (!local.is_empty()).then(|| local.to_string())
}

/// Reads an SES notification (the SNS `Message`).
pub fn parse_ses(message: &str) -> Result<Vec<Feedback>, String> {
    let n: SesNotification =
        serde_json::from_str(message).map_err(|e| format!("not an SES notification: {e}"))?;
    let message_id = n
        .mail
        .common_headers
        .as_ref()
        .and_then(|h| h.message_id.clone())
        .or_else(|| {
            n.mail
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("message-id"))
                .map(|h| h.value.clone())
        })
        .and_then(|v| message_id_from_header(&v));
    let mut out = Vec::new();
    match n.notification_type.as_str() {
        "Bounce" => {
            let b = n.bounce.ok_or("a Bounce notification without `bounce`")?;
            // SES: Permanent = hard; Transient and Undetermined = soft.
            let kind = if b.bounce_type == "Permanent" {
                FeedbackKind::HardBounce
            } else {
                FeedbackKind::SoftBounce
            };
            for r in b.bounced_recipients {
                out.push(Feedback {
                    kind,
                    address: r.email_address,
                    message_id: message_id.clone(),
                    detail: format!(
                        "{}/{}{}",
                        b.bounce_type,
                        b.bounce_sub_type,
                        r.diagnostic_code
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                    at: millis(&b.timestamp),
                });
            }
        }
        "Complaint" => {
            let c = n
                .complaint
                .ok_or("a Complaint notification without `complaint`")?;
            for r in c.complained_recipients {
                out.push(Feedback {
                    kind: FeedbackKind::Complaint,
                    address: r.email_address,
                    message_id: message_id.clone(),
                    detail: c
                        .complaint_feedback_type
                        .clone()
                        .unwrap_or_else(|| "complaint".into()),
                    at: millis(&c.timestamp),
                });
            }
        }
        "Delivery" => {
            let d = n
                .delivery
                .ok_or("a Delivery notification without `delivery`")?;
            for r in d.recipients {
                out.push(Feedback {
                    kind: FeedbackKind::Delivery,
                    address: r,
                    message_id: message_id.clone(),
                    detail: String::new(),
                    at: millis(&d.timestamp),
                });
            }
        }
        // Sends, opens, rendering failures...: not feedback we act on.
        _ => {}
    }
    Ok(out)
}

/// The generic format (`POST /hooks/generic`), for providers without a
/// format of their own here:
/// `{"events": [{"type": "bounce" | "complaint", "address": "…",
///   "bounce_type": "hard" | "soft", "message_id": "…", "detail": "…",
///   "time": "2026-12-04T10:00:00Z"}]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericHook {
    pub events: Vec<GenericEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericEvent {
    #[serde(rename = "type")]
    pub kind: GenericKind,
    pub address: String,
    #[serde(default)]
    pub bounce_type: Option<BounceType>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenericKind {
    Bounce,
    Complaint,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BounceType {
    Hard,
    Soft,
}

impl GenericEvent {
    pub fn feedback(self) -> Feedback {
        let kind = match (self.kind, self.bounce_type) {
            (GenericKind::Complaint, _) => FeedbackKind::Complaint,
            (GenericKind::Bounce, Some(BounceType::Soft)) => FeedbackKind::SoftBounce,
            // A bounce that does not say is taken as permanent, as MTAs do
            // for a 5xx.
            (GenericKind::Bounce, _) => FeedbackKind::HardBounce,
        };
        Feedback {
            kind,
            address: self.address,
            message_id: self.message_id.and_then(|m| message_id_from_header(&m)),
            detail: self.detail.unwrap_or_default(),
            at: millis(&self.time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ses_bounce_names_address_and_message() {
        let msg = r#"{"notificationType":"Bounce","bounce":{"feedbackId":"0100","bounceType":"Permanent","bounceSubType":"General","bouncedRecipients":[{"emailAddress":"ana@example.org","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}],"timestamp":"2026-12-04T10:00:00.000Z","reportingMTA":"dsn; a.example"},"mail":{"timestamp":"2026-12-04T09:59:59.000Z","source":"news@example.com","messageId":"0100018c-ses","destination":["ana@example.org"],"commonHeaders":{"from":["news@example.com"],"to":["ana@example.org"],"messageId":"<0123abcd@example.com>","subject":"Hi"}}}"#;
        let f = parse_ses(msg).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FeedbackKind::HardBounce);
        assert_eq!(f[0].address, "ana@example.org");
        assert_eq!(f[0].message_id.as_deref(), Some("0123abcd"));
        assert!(f[0].detail.contains("550 5.1.1"), "{}", f[0].detail);
        assert_eq!(f[0].at, Some(1_796_378_400_000));
        assert!(parse_ses("{}").is_err());
    }
}
