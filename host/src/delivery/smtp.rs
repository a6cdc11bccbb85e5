//! Real SMTP through lettre's pooled async transport: STARTTLS when the
//! server offers it (or required, or implicit TLS), AUTH when credentials
//! are configured. The sender stage built the complete MIME message; this
//! sends it as is.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;
use squall_pipeline_core::message::DeliveryRequest;

use super::dkim::Dkim;
use super::outcome::classify_smtp;
use super::pacing::Pacing;
use super::{Dispatch, Outcome, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// STARTTLS when the server offers it, plain otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS or no delivery.
    Required,
    /// TLS from the first byte (port 465).
    Wrapper,
    /// Plain text (a local relay or a test sink).
    None,
}

pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub credentials: Option<(String, String)>,
    pub timeout: Duration,
    pub pacing: Arc<Pacing>,
    pub dkim: Option<Dkim>,
}

pub struct SmtpTransport {
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    pacing: Arc<Pacing>,
    dkim: Option<Dkim>,
}

impl SmtpTransport {
    pub fn open(s: SmtpSettings) -> Result<SmtpTransport, String> {
        let tls = || {
            TlsParameters::new(s.host.clone())
                .map_err(|e| format!("cannot set up TLS for {}: {e}", s.host))
        };
        let tls = match s.tls {
            TlsMode::Opportunistic => Tls::Opportunistic(tls()?),
            TlsMode::Required => Tls::Required(tls()?),
            TlsMode::Wrapper => Tls::Wrapper(tls()?),
            TlsMode::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(s.timeout))
            .pool_config(PoolConfig::new().max_size(s.pacing.concurrency as u32));
        if let Some((user, password)) = s.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(SmtpTransport {
            mailer: builder.build(),
            pacing: s.pacing,
            dkim: s.dkim,
        })
    }

    async fn send_one(&self, d: &Dispatch) -> Outcome {
        let DeliveryRequest::Smtp {
            mail_from,
            rcpt_to,
            data,
        } = &d.request
        else {
            return Outcome::Permanent(
                "the smtp transport carries email only; the sender built an HTTP request".into(),
            );
        };
        let parse = |a: &str| {
            a.parse::<Address>()
                .map_err(|e| format!("invalid address `{a}`: {e}"))
        };
        let envelope = match (
            parse(mail_from),
            rcpt_to
                .iter()
                .map(|r| parse(r))
                .collect::<Result<Vec<_>, _>>(),
        ) {
            (Ok(from), Ok(to)) => Envelope::new(Some(from), to),
            (Err(e), _) | (_, Err(e)) => return Outcome::Permanent(e),
        };
        let envelope = match envelope {
            Ok(e) => e,
            Err(e) => return Outcome::Permanent(format!("invalid envelope: {e}")),
        };
        let signed;
        let data = match &self.dkim {
            None => data,
            Some(dkim) => match dkim.sign(data) {
                Ok(d) => {
                    signed = d;
                    &signed
                }
                Err(e) => return Outcome::Permanent(e),
            },
        };
        match self.mailer.send_raw(&envelope, data).await {
            Ok(_) => Outcome::Delivered,
            Err(e) => classify_smtp(&e),
        }
    }
}

#[async_trait]
impl Transport for SmtpTransport {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn paced(&self) -> bool {
        true
    }

    async fn deliver(&self, batch: &[Dispatch]) -> Vec<Outcome> {
        let attempts: Vec<_> = batch
            .iter()
            .map(|d| self.pacing.attempt(self.send_one(d)))
            .collect();
        futures::stream::iter(attempts)
            .buffered(self.pacing.concurrency)
            .collect()
            .await
    }

    async fn reconcile(&self, _ids: &HashSet<String>) -> Option<HashSet<String>> {
        None
    }
}
