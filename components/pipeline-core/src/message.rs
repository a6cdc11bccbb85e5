//! Provider requests: a complete MIME email for SMTP, a Twilio-compatible
//! form for SMS, a JSON document for webhooks. The host executes them; it
//! adds credentials and signatures, which never enter a stage.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::template::Rendered;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Webhook,
}

#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub campaign: String,
    pub channel: Channel,
    pub from: String,
    pub reply_to: Option<String>,
    pub unsubscribe_mailto: Option<String>,
    /// Where HTTP requests go: a URL, or a path the host resolves against
    /// its provider's endpoint. `None` is the provider's endpoint itself.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub message_id: String,
    pub recipient_id: String,
    pub address: String,
    pub segment: String,
    pub variant: String,
    pub unsubscribe_url: String,
    pub content: Rendered,
    /// The recipient's IANA time zone, when the campaign's send window
    /// depends on it (the host decides when to send; stages never see it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeliveryRequest {
    Smtp {
        mail_from: String,
        rcpt_to: Vec<String>,
        data: Vec<u8>,
    },
    Http {
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

pub struct Sender {
    config: SenderConfig,
    from_name: Option<String>,
    from_address: String,
    /// Right-hand side of Message-IDs: the sender's own domain.
    domain: String,
}

impl Sender {
    pub fn compile(config: SenderConfig) -> Result<Sender, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let (from_name, from_address) = split_mailbox(&config.from);
        let domain = from_address
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        match config.channel {
            Channel::Email if domain.is_empty() => problems.push(Diagnostic::new(
                "delivery.from",
                1,
                1,
                format!(
                    "`{}` is not an email address like `Shop <news@example.com>`",
                    config.from
                ),
            )),
            _ => {}
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Sender {
            config,
            from_name,
            from_address,
            domain,
        })
    }

    pub fn build(&self, m: &Outgoing, now: i64) -> Result<DeliveryRequest, String> {
        match self.config.channel {
            Channel::Email => self.email(m, now),
            Channel::Sms => Ok(self.sms(m)),
            Channel::Webhook => self.webhook(m),
        }
    }

    fn email(&self, m: &Outgoing, now: i64) -> Result<DeliveryRequest, String> {
        let mut unsubscribe = format!("<{}>", m.unsubscribe_url);
        if let Some(mailto) = &self.config.unsubscribe_mailto {
            unsubscribe.push_str(&format!(
                ", <mailto:{mailto}?subject=unsubscribe%20{}>",
                m.message_id
            ));
        }
        let from = match &self.from_name {
            Some(name) => Address::new_address(Some(name.as_str()), self.from_address.as_str()),
            None => Address::new_address(None::<&str>, self.from_address.as_str()),
        };
        let mut builder = MessageBuilder::new()
            .from(from)
            .to(Address::new_address(None::<&str>, m.address.as_str()))
            .subject(m.content.subject.as_str())
            .date(now)
            .message_id(format!("{}@{}", m.message_id, self.domain))
            .header("List-Unsubscribe", Raw::new(unsubscribe))
            .header(
                "List-Unsubscribe-Post",
                Raw::new("List-Unsubscribe=One-Click"),
            )
            .header("X-Squall-Campaign", Raw::new(self.config.campaign.as_str()))
            .text_body(m.content.text.as_str());
        if let Some(reply_to) = &self.config.reply_to {
            builder = builder.reply_to(Address::new_address(None::<&str>, reply_to.as_str()));
        }
        if let Some(html) = &m.content.html {
            builder = builder.html_body(html.as_str());
        }
        let data = builder
            .write_to_vec()
            .map_err(|e| format!("cannot build MIME message: {e}"))?;
        Ok(DeliveryRequest::Smtp {
            mail_from: self.from_address.clone(),
            rcpt_to: vec![m.address.clone()],
            data,
        })
    }

    /// Twilio's Messages API shape, which most SMS gateways accept.
    fn sms(&self, m: &Outgoing) -> DeliveryRequest {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("To", &m.address)
            .append_pair("From", &self.config.from)
            .append_pair("Body", &m.content.text)
            .finish();
        DeliveryRequest::Http {
            method: "POST".into(),
            url: self.config.endpoint.clone().unwrap_or_default(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: body.into_bytes(),
        }
    }

    fn webhook(&self, m: &Outgoing) -> Result<DeliveryRequest, String> {
        let doc = serde_json::json!({
            "campaign": self.config.campaign,
            "message_id": m.message_id,
            "recipient_id": m.recipient_id,
            "address": m.address,
            "segment": m.segment,
            "variant": m.variant,
            "subject": m.content.subject,
            "text": m.content.text,
            "html": m.content.html,
        });
        Ok(DeliveryRequest::Http {
            method: "POST".into(),
            url: self.config.endpoint.clone().unwrap_or_default(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("idempotency-key".into(), m.message_id.clone()),
            ],
            body: serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
        })
    }
}

/// `Shop <news@example.com>` → (Some("Shop"), "news@example.com").
fn split_mailbox(s: &str) -> (Option<String>, String) {
    match (s.find('<'), s.rfind('>')) {
        (Some(l), Some(r)) if l < r => {
            let name = s[..l].trim().trim_matches('"').trim();
            (
                (!name.is_empty()).then(|| name.to_string()),
                s[l + 1..r].trim().to_string(),
            )
        }
        _ => (None, s.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(html: Option<&str>) -> Outgoing {
        Outgoing {
            message_id: "0123abcd".into(),
            recipient_id: "42".into(),
            address: "ana@example.org".into(),
            segment: "vip".into(),
            variant: "a".into(),
            unsubscribe_url: "https://t.example.com/u/0123abcd".into(),
            timezone: None,
            content: Rendered {
                subject: "Grüße, Ana".into(),
                text: "Hallo Ana".into(),
                html: html.map(str::to_string),
            },
        }
    }

    fn config(channel: Channel) -> SenderConfig {
        SenderConfig {
            campaign: "spring".into(),
            channel,
            from: "Shop <news@example.com>".into(),
            reply_to: None,
            unsubscribe_mailto: Some("unsub@example.com".into()),
            endpoint: Some("https://sms.example.com/Messages.json".into()),
        }
    }

    #[test]
    fn email_is_complete_mime_with_one_click_unsubscribe() {
        let s = Sender::compile(config(Channel::Email)).unwrap();
        let DeliveryRequest::Smtp {
            mail_from,
            rcpt_to,
            data,
        } = s
            .build(&outgoing(Some("<p>Hallo</p>")), 1_700_000_000)
            .unwrap()
        else {
            panic!("not smtp")
        };
        assert_eq!(mail_from, "news@example.com");
        assert_eq!(rcpt_to, vec!["ana@example.org"]);
        let text = String::from_utf8(data).unwrap();
        assert!(
            text.contains(
                "List-Unsubscribe: <https://t.example.com/u/0123abcd>, <mailto:unsub@example.com"
            ),
            "{text}"
        );
        assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(text.contains("Message-ID: <0123abcd@example.com>"));
        assert!(text.contains("multipart/alternative"));
        assert!(
            text.contains("Subject: =?utf-8?"),
            "non-ASCII subject is encoded: {text}"
        );
        assert!(text.contains("From: \"Shop\" <news@example.com>"), "{text}");
    }

    #[test]
    fn sms_is_a_twilio_form() {
        let s = Sender::compile(config(Channel::Sms)).unwrap();
        let DeliveryRequest::Http { method, body, .. } = s.build(&outgoing(None), 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(method, "POST");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "To=ana%40example.org&From=Shop+%3Cnews%40example.com%3E&Body=Hallo+Ana"
        );
    }

    #[test]
    fn email_needs_a_from_address() {
        let mut c = config(Channel::Email);
        c.from = "Shop".into();
        assert_eq!(Sender::compile(c).err().unwrap()[0].source, "delivery.from");
    }
}
