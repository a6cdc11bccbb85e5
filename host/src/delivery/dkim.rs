//! DKIM signing (RFC 6376) of outgoing mail with `mail-auth`: RSA-SHA256,
//! relaxed/relaxed canonicalisation. The host signs, not the sender stage:
//! the private key is a secret no plugin should hold, and signing the
//! final bytes just before they are sent means nothing changes them after.

use std::path::PathBuf;

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

/// `dkim = { domain = "example.com", selector = "s2027", private_key_env = "DKIM_KEY" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`); the public key is published at
    /// `<selector>._domainkey.<domain>`.
    pub domain: String,
    pub selector: String,
    /// An environment variable holding the RSA private key (PEM, PKCS#1 or
    /// PKCS#8) ...
    pub private_key_env: Option<String>,
    /// ... or a file holding it.
    pub private_key_file: Option<PathBuf>,
    /// Header fields signed; the default covers what a receiver shows and
    /// what unsubscribing depends on.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
}

fn default_headers() -> Vec<String> {
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "MIME-Version",
        "Content-Type",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

pub struct Dkim {
    signer: DkimSigner<RsaKey<Sha256>, Done>,
}

impl DkimConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.domain.is_empty() || self.selector.is_empty() {
            return Err("dkim needs a `domain` and a `selector`".into());
        }
        match (&self.private_key_env, &self.private_key_file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("dkim needs exactly one of `private_key_env` and `private_key_file`".into()),
        }
    }

    /// Reads the key and builds the signer.
    pub fn open(&self) -> Result<Dkim, String> {
        self.check()?;
        let pem = match (&self.private_key_env, &self.private_key_file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                format!(
                    "the DKIM key is read from the environment variable `{var}`, which is not set"
                )
            })?,
            (_, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the DKIM key {}: {e}", path.display()))?,
            _ => unreachable!("checked above"),
        };
        Dkim::from_pem(&self.domain, &self.selector, &self.headers, &pem)
    }
}

impl Dkim {
    pub fn from_pem(
        domain: &str,
        selector: &str,
        headers: &[String],
        pem: &str,
    ) -> Result<Dkim, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("the DKIM key is not a PEM private key: {e}"))?;
        let key = RsaKey::<Sha256>::from_key_der(der)
            .map_err(|e| format!("the DKIM key is not an RSA key: {e}"))?;
        let signer = DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(headers.iter().cloned())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Dkim { signer })
    }

    /// The message with its `DKIM-Signature` header in front.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let signature = self
            .signer
            .sign(message)
            .map_err(|e| format!("DKIM signing failed: {e}"))?;
        let header = signature.to_header();
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}
