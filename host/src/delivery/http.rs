//! HTTP providers: a Twilio-compatible SMS gateway and signed webhooks.
//! The sender stage built each request (method, URL, headers, body); here
//! it is resolved against the provider's endpoint, checked against the
//! provider's allow-list, given its credentials, and executed.
//!
//! A request whose URL is empty or a path (`/Messages.json`) goes to the
//! provider's endpoint; an absolute URL must name an allowed host. So a
//! sender plugin can reach its own gateway and nothing else.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{KeyInit, Mac};
use reqwest::Url;
use squall_pipeline_core::message::DeliveryRequest;
use squall_pipeline_core::sms;

use super::outcome::classify_http;
use super::pacing::Pacing;
use super::provider::ProviderKind;
use super::{Dispatch, Outcome, Transport};

/// The header a webhook receiver verifies: `t=<unix seconds>,v1=<hex>`,
/// where `v1` is HMAC-SHA256 over `<t>.<body>` with the shared key. The
/// time inside the signature lets a receiver refuse replays.
pub const SIGNATURE_HEADER: &str = "x-squall-signature";

pub enum HttpAuth {
    None,
    Basic(String, String),
    Hmac(Vec<u8>),
}

pub struct HttpTransport {
    kind: ProviderKind,
    client: reqwest::Client,
    endpoint: Url,
    allowed: HashSet<String>,
    auth: HttpAuth,
    pacing: Arc<Pacing>,
}

/// `t=…,v1=…` for `body` at `t`.
pub fn signature(key: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl HttpTransport {
    pub fn new(
        kind: ProviderKind,
        endpoint: Url,
        allow: &[String],
        auth: HttpAuth,
        timeout: Duration,
        pacing: Arc<Pacing>,
    ) -> Result<HttpTransport, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(pacing.concurrency)
            // A redirect could lead outside the allow-list.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("squall/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut allowed: HashSet<String> = allow.iter().map(|h| h.to_ascii_lowercase()).collect();
        allowed.extend(endpoint.host_str().map(str::to_ascii_lowercase));
        Ok(HttpTransport {
            kind,
            client,
            endpoint,
            allowed,
            auth,
            pacing,
        })
    }

    fn resolve(&self, url: &str) -> Result<Url, String> {
        let url = if url.is_empty() {
            self.endpoint.clone()
        } else if url.starts_with('/') {
            self.endpoint
                .join(url)
                .map_err(|e| format!("cannot resolve `{url}` against the endpoint: {e}"))?
        } else {
            Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?
        };
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !matches!(url.scheme(), "http" | "https") || !self.allowed.contains(&host) {
            return Err(format!(
                "`{url}` is not an allowed destination of this provider (add its host to the provider's `allow` list if it should be)"
            ));
        }
        Ok(url)
    }

    async fn send_one(&self, d: &Dispatch) -> Outcome {
        let DeliveryRequest::Http {
            method,
            url,
            headers,
            body,
        } = &d.request
        else {
            return Outcome::Permanent(format!(
                "the {} provider carries HTTP requests; the sender built an SMTP envelope",
                self.kind.as_str()
            ));
        };
        let url = match self.resolve(url) {
            Ok(u) => u,
            Err(e) => return Outcome::Permanent(e),
        };
        let method = match reqwest::Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Outcome::Permanent(format!("`{method}` is not an HTTP method")),
        };
        let mut req = self.client.request(method, url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req = match &self.auth {
            HttpAuth::None => req,
            HttpAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
            HttpAuth::Hmac(key) => {
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                req.header(SIGNATURE_HEADER, signature(key, t, body))
            }
        };
        match req.body(body.clone()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let text = resp.text().await.unwrap_or_default();
                let outcome = classify_http(status, retry_after.as_deref(), &text);
                if outcome == Outcome::Delivered && self.kind == ProviderKind::HttpSms {
                    self.pacing
                        .metrics
                        .add_units(sms::segments(&d.record.text).count as u64);
                }
                outcome
            }
            // Refused, reset, timed out: not accepted as far as we know.
            Err(e) => Outcome::transient(format!("HTTP request failed: {}", error_chain(&e))),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait]
impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        self.kind.as_str()
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
        // A request whose answer never came may or may not have been taken.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::metrics::ProviderMetrics;

    fn transport(allow: &[&str]) -> HttpTransport {
        let metrics = Arc::new(ProviderMetrics::new("gw", "webhook"));
        HttpTransport::new(
            ProviderKind::Webhook,
            Url::parse("https://gw.example.com/base/").unwrap(),
            &allow.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            HttpAuth::None,
            Duration::from_secs(1),
            Arc::new(Pacing::new(None, 1, metrics)),
        )
        .unwrap()
    }

    #[test]
    fn requests_reach_the_endpoint_and_the_allowed_hosts_only() {
        let t = transport(&["Status.Example.com"]);
        assert_eq!(
            t.resolve("").unwrap().as_str(),
            "https://gw.example.com/base/"
        );
        assert_eq!(
            t.resolve("/v1/messages").unwrap().as_str(),
            "https://gw.example.com/v1/messages"
        );
        assert!(t.resolve("https://gw.example.com/other").is_ok());
        assert!(t.resolve("https://status.example.com/ping").is_ok());
        let refused = t.resolve("https://evil.example.net/steal").unwrap_err();
        assert!(refused.contains("not an allowed destination"), "{refused}");
        assert!(t.resolve("file:///etc/passwd").is_err());
        assert!(t.resolve("ftp://gw.example.com/").is_err());
    }

    #[test]
    fn the_signature_covers_time_and_body() {
        let a = signature(b"key", 1_700_000_000, b"{\"a\":1}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, signature(b"key", 1_700_000_001, b"{\"a\":1}"));
        assert_ne!(a, signature(b"key", 1_700_000_000, b"{\"a\":2}"));
        assert_ne!(a, signature(b"other", 1_700_000_000, b"{\"a\":1}"));
    }
}
