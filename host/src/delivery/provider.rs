//! `[[provider]]` in `squall.toml`: a named way out (an SMTP relay, an SMS
//! gateway, a webhook receiver, the outbox), with its credentials, limits
//! and circuit breaker. Campaigns name providers in order of preference
//! (`[delivery] providers = ["primary", "backup"]`); see `chain`.
//!
//! Credentials are never in the file: it names the environment variables
//! that hold them, read when the provider is opened.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Transport;
use super::breaker::{Breaker, BreakerConfig};
use super::dkim::DkimConfig;
use super::http::{HttpAuth, HttpTransport};
use super::metrics::ProviderMetrics;
use super::pacing::Pacing;
use super::smtp::{SmtpSettings, SmtpTransport, TlsMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Smtp,
    HttpSms,
    Webhook,
    Outbox,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Smtp => "smtp",
            ProviderKind::HttpSms => "http-sms",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Outbox => "outbox",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// `smtp://host:port` (`smtps://` for TLS from the first byte), or the
    /// URL HTTP requests go to (a Twilio-compatible Messages URL, a webhook
    /// receiver). Not used by `outbox`.
    pub endpoint: Option<String>,
    /// SMTP AUTH user, or the HTTP basic-auth user (Twilio: the account SID).
    pub username_env: Option<String>,
    /// SMTP AUTH password, or the HTTP basic-auth password (Twilio: the token).
    pub password_env: Option<String>,
    /// Webhook: the HMAC-SHA256 key that signs each request.
    pub secret_env: Option<String>,
    /// SMTP: `opportunistic` (STARTTLS when offered, the default),
    /// `required` (STARTTLS or fail), `wrapper` (implicit TLS), `none`.
    #[serde(default)]
    pub tls: TlsMode,
    /// SMTP: a CA certificate (PEM file) trusted besides the system's
    /// roots, for relays with certificates from a private CA.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Attempts per second from this process; unset is unlimited.
    pub rate_per_second: Option<f64>,
    /// Attempts in flight at once (SMTP: pooled connections).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Attempts at one message through this provider before it fails over
    /// (or goes back to the queue), with exponential backoff and jitter.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// The longest wait between two attempts, `Retry-After` included; a
    /// provider asking for longer gets its messages back through the queue.
    #[serde(default = "default_max_retry_wait", with = "duration")]
    pub max_retry_wait: Duration,
    /// Hosts HTTP requests may go to besides the endpoint's own (a custom
    /// sender plugin may build URLs; nothing else is reachable).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// SMTP: sign each message with DKIM.
    pub dkim: Option<DkimConfig>,
}

fn default_concurrency() -> u32 {
    8
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_attempts() -> u32 {
    3
}
fn default_max_retry_wait() -> Duration {
    Duration::from_secs(30)
}

/// Durations as humans write them: `"30s"`, `"1m 30s"`, `"250ms"`.
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like \"30s\": {e}"))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider `{provider}`: {problem}")]
    Invalid { provider: String, problem: String },
}

impl ProviderConfig {
    /// A plain SMTP relay from a campaign's `transport = "smtp://host:port"`.
    pub fn smtp_relay(host: &str, port: u16, connections: u32) -> ProviderConfig {
        ProviderConfig {
            name: format!("smtp://{host}:{port}"),
            kind: ProviderKind::Smtp,
            endpoint: Some(format!("smtp://{host}:{port}")),
            username_env: None,
            password_env: None,
            secret_env: None,
            tls: TlsMode::None,
            tls_ca_file: None,
            rate_per_second: None,
            concurrency: connections,
            timeout: default_timeout(),
            attempts: default_attempts(),
            max_retry_wait: default_max_retry_wait(),
            allow: Vec::new(),
            breaker: BreakerConfig::default(),
            dkim: None,
        }
    }

    fn invalid(&self, problem: impl Into<String>) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            problem: problem.into(),
        }
    }

    /// Every problem a provider's settings can have without opening it.
    pub fn check(&self) -> Result<(), ProviderError> {
        if self.name.is_empty() {
            return Err(self.invalid("a provider needs a `name`"));
        }
        if self.concurrency == 0 || self.attempts == 0 {
            return Err(self.invalid("`concurrency` and `attempts` must be at least 1"));
        }
        if self.rate_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(self.invalid("`rate_per_second` must be above 0"));
        }
        if !(self.breaker.failure_rate > 0.0 && self.breaker.failure_rate <= 1.0) {
            return Err(self.invalid("`breaker.failure_rate` must be in (0, 1]"));
        }
        if let Some(d) = &self.dkim {
            if self.kind != ProviderKind::Smtp {
                return Err(self.invalid("`dkim` signs email: only smtp providers take it"));
            }
            d.check().map_err(|e| self.invalid(e))?;
        }
        match self.kind {
            ProviderKind::Outbox => Ok(()),
            ProviderKind::Smtp => self.smtp_endpoint().map(|_| ()),
            ProviderKind::HttpSms | ProviderKind::Webhook => self.http_endpoint().map(|_| ()),
        }
    }

    fn smtp_endpoint(&self) -> Result<(String, u16, bool), ProviderError> {
        let e = self.endpoint.as_deref().ok_or_else(|| {
            self.invalid("an smtp provider needs `endpoint = \"smtp://host:port\"`")
        })?;
        let (implicit_tls, rest) = match (e.strip_prefix("smtp://"), e.strip_prefix("smtps://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(self.invalid(format!(
                    "`{e}` is not smtp://host:port or smtps://host:port"
                )));
            }
        };
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
                Ok(port) => Ok((h.to_string(), port, implicit_tls)),
                Err(_) => Err(self.invalid(format!("`{p}` in `{e}` is not a port"))),
            },
            _ => Ok((
                rest.to_string(),
                if implicit_tls { 465 } else { 587 },
                implicit_tls,
            )),
        }
    }

    fn http_endpoint(&self) -> Result<reqwest::Url, ProviderError> {
        let e = self
            .endpoint
            .as_deref()
            .ok_or_else(|| self.invalid("an HTTP provider needs `endpoint = \"https://…\"`"))?;
        let url = reqwest::Url::parse(e).map_err(|err| self.invalid(format!("`{e}`: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.invalid(format!("`{e}` is not an http(s) URL")));
        }
        Ok(url)
    }

    fn env(&self, var: &Option<String>, what: &str) -> Result<Option<String>, ProviderError> {
        match var {
            None => Ok(None),
            Some(name) => std::env::var(name).map(Some).map_err(|_| {
                self.invalid(format!(
                    "{what} is read from the environment variable `{name}`, which is not set"
                ))
            }),
        }
    }

    /// Opens the provider: reads its credentials, builds its client. The
    /// outbox is opened by the caller (it knows where files go).
    pub fn open(
        &self,
        outbox: impl FnOnce() -> std::io::Result<Arc<dyn Transport>>,
    ) -> Result<Provider, ProviderError> {
        self.check()?;
        let metrics = Arc::new(ProviderMetrics::new(&self.name, self.kind.as_str()));
        let pacing = Arc::new(Pacing::new(
            self.rate_per_second,
            self.concurrency,
            metrics.clone(),
        ));
        let user = self.env(&self.username_env, "the user name")?;
        let password = self.env(&self.password_env, "the password")?;
        let transport: Arc<dyn Transport> = match self.kind {
            ProviderKind::Outbox => {
                outbox().map_err(|e| self.invalid(format!("cannot open the outbox: {e}")))?
            }
            ProviderKind::Smtp => {
                let (host, port, implicit) = self.smtp_endpoint()?;
                let credentials = match (user, password) {
                    (Some(u), Some(p)) => Some((u, p)),
                    (None, None) => None,
                    _ => {
                        return Err(
                            self.invalid("SMTP AUTH needs both `username_env` and `password_env`")
                        );
                    }
                };
                Arc::new(
                    SmtpTransport::open(SmtpSettings {
                        host,
                        port,
                        tls: if implicit { TlsMode::Wrapper } else { self.tls },
                        credentials,
                        timeout: self.timeout,
                        pacing: pacing.clone(),
                        extra_ca: self
                            .tls_ca_file
                            .as_ref()
                            .map(|f| {
                                std::fs::read(f).map_err(|e| {
                                    self.invalid(format!("cannot read {}: {e}", f.display()))
                                })
                            })
                            .transpose()?,
                        dkim: self
                            .dkim
                            .as_ref()
                            .map(|d| d.open())
                            .transpose()
                            .map_err(|e| self.invalid(e))?,
                    })
                    .map_err(|e| self.invalid(e))?,
                )
            }
            ProviderKind::HttpSms | ProviderKind::Webhook => {
                let endpoint = self.http_endpoint()?;
                let auth = match (
                    self.kind,
                    user,
                    password,
                    self.env(&self.secret_env, "the signing key")?,
                ) {
                    (ProviderKind::Webhook, _, _, Some(secret)) => {
                        HttpAuth::Hmac(secret.into_bytes())
                    }
                    (ProviderKind::Webhook, _, _, None) => {
                        return Err(self.invalid(
                            "a webhook provider signs its requests: set `secret_env` to the variable holding the key",
                        ));
                    }
                    (_, Some(u), Some(p), _) => HttpAuth::Basic(u, p),
                    (_, None, None, _) => HttpAuth::None,
                    _ => {
                        return Err(
                            self.invalid("basic auth needs both `username_env` and `password_env`")
                        );
                    }
                };
                Arc::new(
                    HttpTransport::new(
                        self.kind,
                        endpoint,
                        &self.allow,
                        auth,
                        self.timeout,
                        pacing.clone(),
                    )
                    .map_err(|e| self.invalid(e))?,
                )
            }
        };
        Ok(Provider {
            name: self.name.clone(),
            kind: self.kind,
            transport,
            breaker: Breaker::new(self.breaker.clone()),
            metrics,
            pacing,
            attempts: self.attempts,
            max_retry_wait: self.max_retry_wait,
        })
    }
}

/// An opened provider: its transport and its health.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub transport: Arc<dyn Transport>,
    pub breaker: Breaker,
    pub metrics: Arc<ProviderMetrics>,
    /// The provider's rate and concurrency (network transports apply it per
    /// attempt themselves; the chain applies it to the others per batch).
    pub pacing: Arc<Pacing>,
    pub attempts: u32,
    pub max_retry_wait: Duration,
}
