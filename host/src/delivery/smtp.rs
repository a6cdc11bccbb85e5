//! Real SMTP through lettre's pooled async transport. The sender stage
//! built the complete MIME message; this sends it as is.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use squall_pipeline_core::message::DeliveryRequest;

use super::outcome::classify_smtp;
use super::{Dispatch, Outcome, Transport};

pub struct SmtpTransport {
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    connections: usize,
}

impl SmtpTransport {
    /// Plain SMTP to `host:port` (a relay or a test sink). STARTTLS, AUTH
    /// and providers with failover come with `[[provider]]` configuration.
    pub fn new(host: &str, port: u16, connections: u32) -> SmtpTransport {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_secs(30)))
            .pool_config(PoolConfig::new().max_size(connections))
            .build();
        SmtpTransport {
            mailer,
            connections: connections as usize,
        }
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

    async fn deliver(&self, batch: &[Dispatch]) -> Vec<Outcome> {
        let sends: Vec<_> = batch.iter().map(|d| self.send_one(d)).collect();
        futures::stream::iter(sends)
            .buffered(self.connections.max(1))
            .collect()
            .await
    }

    async fn reconcile(&self, _ids: &HashSet<String>) -> Option<HashSet<String>> {
        None
    }
}
