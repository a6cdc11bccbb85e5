//! Real SMTP: a pool (deadpool) of lettre connections per provider, with
//! STARTTLS when the server offers it (or required, or implicit TLS) and
//! AUTH when credentials are configured. The sender stage built the
//! complete MIME message; this signs it (DKIM) if asked and sends it as is.
//!
//! Why not lettre's own pooled `AsyncSmtpTransport`: it writes a message's
//! body and its final `.` in two writes on a socket with Nagle's algorithm
//! on, so every message waits out the server's delayed ACK (about 40 ms on
//! Linux), and it sends a NOOP before each message. Here connections are
//! made by us with `TCP_NODELAY`, handed to lettre's protocol code
//! (`AsyncSmtpConnection`), and checked with a NOOP only after they sat idle.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::Deserialize;
use squall_pipeline_core::message::DeliveryRequest;

use super::dkim::Dkim;
use super::outcome::{Outcome, classify_smtp};
use super::pacing::Pacing;
use super::{Dispatch, Transport};

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
    /// A CA (PEM) trusted besides the system's roots: a relay with a
    /// certificate from a private CA.
    pub extra_ca: Option<Vec<u8>>,
}

/// A pooled connection idle longer than this is checked with a NOOP
/// before use: servers drop idle clients (Postfix after 300 s), and a
/// message sent into a dead connection would cost a retry.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot connect to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("connecting to {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

/// Makes and checks connections for the pool.
struct Connector {
    host: String,
    port: u16,
    tls: Tls,
    timeout: Duration,
    hello: ClientId,
    credentials: Option<Credentials>,
}

impl Connector {
    async fn connect(&self) -> Result<AsyncSmtpConnection, ConnectError> {
        let server = format!("{}:{}", self.host, self.port);
        let mut conn = match &self.tls {
            // Implicit TLS wraps the socket before the greeting; lettre
            // connects it (without TCP_NODELAY: port 465 is the rare case).
            Tls::Wrapper(p) => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    Some(p.clone()),
                    None,
                )
                .await?
            }
            _ => {
                let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
                let tcp = tokio::time::timeout(self.timeout, tcp)
                    .await
                    .map_err(|_| ConnectError::Timeout(server.clone(), self.timeout))?
                    .map_err(|e| ConnectError::Io(server.clone(), e))?;
                tcp.set_nodelay(true)
                    .map_err(|e| ConnectError::Io(server.clone(), e))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await?
            }
        };
        match &self.tls {
            Tls::Opportunistic(p) if conn.can_starttls() => {
                conn.starttls(p.clone(), &self.hello).await?
            }
            Tls::Required(p) => conn.starttls(p.clone(), &self.hello).await?,
            _ => {}
        }
        if let Some(c) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c).await?;
        }
        Ok(conn)
    }
}

impl managed::Manager for Connector {
    type Type = AsyncSmtpConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<AsyncSmtpConnection, ConnectError> {
        let server = format!("{}:{}", self.host, self.port);
        tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| ConnectError::Timeout(server, self.timeout))?
    }

    async fn recycle(
        &self,
        conn: &mut AsyncSmtpConnection,
        metrics: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if conn.has_broken() {
            return Err(RecycleError::message("the connection broke"));
        }
        if metrics.last_used() > CHECK_AFTER_IDLE && !conn.test_connected().await {
            return Err(RecycleError::message(
                "the server closed the idle connection",
            ));
        }
        Ok(())
    }
}

pub struct SmtpTransport {
    pool: managed::Pool<Connector>,
    timeout: Duration,
    pacing: Arc<Pacing>,
    dkim: Option<Dkim>,
}

impl SmtpTransport {
    pub fn open(s: SmtpSettings) -> Result<SmtpTransport, String> {
        let tls = || {
            let mut b = TlsParameters::builder(s.host.clone());
            if let Some(pem) = &s.extra_ca {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| format!("the provider's CA certificate is not PEM: {e}"))?;
                b = b.add_root_certificate(cert);
            }
            b.build()
                .map_err(|e| format!("cannot set up TLS for {}: {e}", s.host))
        };
        let tls = match s.tls {
            TlsMode::Opportunistic => Tls::Opportunistic(tls()?),
            TlsMode::Required => Tls::Required(tls()?),
            TlsMode::Wrapper => Tls::Wrapper(tls()?),
            TlsMode::None => Tls::None,
        };
        let connector = Connector {
            host: s.host,
            port: s.port,
            tls,
            timeout: s.timeout,
            // EHLO with this machine's hostname (lettre's default).
            hello: ClientId::default(),
            credentials: s.credentials.map(|(u, p)| Credentials::new(u, p)),
        };
        let pool = managed::Pool::builder(connector)
            .max_size(s.pacing.concurrency)
            .build()
            .map_err(|e| format!("cannot build the SMTP connection pool: {e}"))?;
        Ok(SmtpTransport {
            pool,
            timeout: s.timeout,
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
        let mut conn = match self.pool.get().await {
            Ok(c) => c,
            Err(managed::PoolError::Backend(ConnectError::Smtp(e))) => return classify_smtp(&e),
            // Refused, unreachable, timed out: nothing was sent.
            Err(e) => return Outcome::transient(e.to_string()),
        };
        match tokio::time::timeout(self.timeout, conn.send(&envelope, data)).await {
            Ok(Ok(_)) => Outcome::Delivered,
            // lettre breaks the connection on any error; the pool drops it.
            Ok(Err(e)) => classify_smtp(&e),
            Err(_) => {
                // Mid-transaction: never hand this connection out again.
                drop(Object::take(conn));
                Outcome::transient(format!(
                    "the SMTP server did not answer within {:?}",
                    self.timeout
                ))
            }
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
        self.pacing
            .each(batch.iter().map(|d| self.send_one(d)))
            .await
    }

    async fn reconcile(&self, _ids: &HashSet<String>) -> Option<HashSet<String>> {
        None
    }
}
