//! Verifies Amazon SNS messages (HTTP/S subscriptions): the signature over
//! the canonical string AWS documents, with the certificate at
//! `SigningCertURL`, which must itself come from SNS (or a URL the config
//! trusts). Without this anyone could POST a "bounce" and suppress any
//! address.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use serde::Deserialize;
use x509_cert::der::DecodePem;

/// The fields of an SNS message that are signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    pub topic_arn: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub message: String,
    pub timestamp: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub signature_version: String,
    #[serde(default)]
    pub signature: String,
    #[serde(rename = "SigningCertURL", default)]
    pub signing_cert_url: String,
}

impl SnsMessage {
    /// The string SNS signs: chosen fields as `name\nvalue\n`, in order.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        let mut add = |k: &str, v: &str| {
            out.push_str(k);
            out.push('\n');
            out.push_str(v);
            out.push('\n');
        };
        add("Message", &self.message);
        add("MessageId", &self.message_id);
        if self.kind == "Notification" {
            if let Some(s) = &self.subject {
                add("Subject", s);
            }
        } else {
            add("SubscribeURL", self.subscribe_url.as_deref().unwrap_or(""));
        }
        add("Timestamp", &self.timestamp);
        if self.kind != "Notification" {
            add("Token", self.token.as_deref().unwrap_or(""));
        }
        add("TopicArn", &self.topic_arn);
        add("Type", &self.kind);
        out
    }
}

/// Whether a URL is SNS's own (`https://sns.<region>.amazonaws.com/…`) or
/// starts with a prefix the deployment trusts.
pub fn trusted_url(url: &str, extra: &[String]) -> bool {
    if extra
        .iter()
        .any(|p| !p.is_empty() && url.starts_with(p.as_str()))
    {
        return true;
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    host.starts_with("sns.")
        && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"))
        && !host.contains(':')
        && !host.contains('@')
}

#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    #[error("SNS signing certificate URL is not SNS's own: {0}")]
    UntrustedCert(String),
    #[error("cannot fetch the SNS signing certificate: {0}")]
    Fetch(String),
    #[error("SNS signing certificate is not a usable RSA certificate: {0}")]
    BadCert(String),
    #[error("SNS signature version `{0}` is not supported (1 or 2)")]
    Version(String),
    #[error("SNS signature does not verify")]
    BadSignature,
}

/// Certificates by URL: SNS signs with few, and fetching one per message
/// would make every notification wait on AWS.
#[derive(Default)]
pub struct CertCache {
    keys: Mutex<HashMap<String, Vec<u8>>>,
}

impl CertCache {
    async fn public_key(
        &self,
        http: &reqwest::Client,
        url: &str,
        trusted: &[String],
    ) -> Result<Vec<u8>, SnsError> {
        if let Some(k) = self.keys.lock().unwrap().get(url) {
            return Ok(k.clone());
        }
        if !trusted_url(url, trusted) || !url.ends_with(".pem") {
            return Err(SnsError::UntrustedCert(url.to_string()));
        }
        let pem = http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| SnsError::Fetch(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| SnsError::Fetch(e.to_string()))?;
        let cert =
            x509_cert::Certificate::from_pem(&pem).map_err(|e| SnsError::BadCert(e.to_string()))?;
        // The RSAPublicKey (PKCS #1) inside the certificate's key info.
        let key = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        self.keys
            .lock()
            .unwrap()
            .insert(url.to_string(), key.clone());
        Ok(key)
    }

    pub async fn verify(
        &self,
        http: &reqwest::Client,
        m: &SnsMessage,
        trusted: &[String],
    ) -> Result<(), SnsError> {
        let algorithm: &dyn ring::signature::VerificationAlgorithm =
            match m.signature_version.as_str() {
                "1" => &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                "2" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                other => return Err(SnsError::Version(other.to_string())),
            };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(m.signature.trim())
            .map_err(|_| SnsError::BadSignature)?;
        let key = self.public_key(http, &m.signing_cert_url, trusted).await?;
        ring::signature::UnparsedPublicKey::new(algorithm, &key)
            .verify(m.canonical().as_bytes(), &signature)
            .map_err(|_| SnsError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::trusted_url;

    #[test]
    fn only_sns_hosts_are_trusted() {
        assert!(trusted_url(
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
            &[]
        ));
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com@evil.example/x.pem",
        ] {
            assert!(!trusted_url(bad, &[]), "{bad}");
        }
        assert!(trusted_url(
            "http://127.0.0.1:9/c.pem",
            &["http://127.0.0.1:9/".into()]
        ));
    }
}
