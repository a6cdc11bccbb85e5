//! Tracking tokens: what a link in a message stands for, signed so that
//! nobody can forge an open, a click or an unsubscribe, and no click link
//! can be turned into an open redirect.
//!
//! A token is `base64url(payload) "." base64url(mac)`: the payload is a
//! compact JSON array (kind, campaign, recipient, `segment/variant`, wave,
//! extra: the click's URL or the unsubscribing address), the MAC an
//! HMAC-SHA-256 of the payload truncated to 128 bits (NIST SP 800-107
//! allows truncation; 128 bits is far beyond what forging online needs).
//! Everything an event is counted by travels in the token, so recording one
//! needs no look-up on the hot path.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use crate::store::MessageRef;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const MAC_LEN: usize = 16;
/// Longest token accepted: a click URL of a few KiB at most.
const MAX_TOKEN: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    #[serde(rename = "o")]
    Open,
    #[serde(rename = "c")]
    Click,
    #[serde(rename = "u")]
    Unsubscribe,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub kind: LinkKind,
    pub message: MessageRef,
    /// The URL a click goes to; the address an unsubscribe removes.
    pub extra: String,
}

#[derive(Serialize, Deserialize)]
struct Payload(LinkKind, String, String, String, String, u32, String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed tracking token")]
    Malformed,
    #[error("tracking token signature does not match")]
    BadSignature,
}

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub fn sign(&self, link: &Link) -> String {
        let m = &link.message;
        let payload = serde_json::to_vec(&Payload(
            link.kind,
            m.campaign.clone(),
            m.recipient_id.clone(),
            format!("{}/{}", m.segment, m.variant),
            m.message_id.clone(),
            m.wave,
            link.extra.clone(),
        ))
        .expect("a tuple of strings serialises");
        let mut mac = self.mac();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!("{}.{}", B64.encode(&payload), B64.encode(&tag[..MAC_LEN]))
    }

    /// Checks the signature (in constant time) before reading anything.
    pub fn verify(&self, token: &str) -> Result<Link, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        if tag.len() != MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_truncated_left(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let Payload(kind, campaign, recipient_id, key, message_id, wave, extra) =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let (segment, variant) = key.split_once('/').ok_or(TokenError::Malformed)?;
        Ok(Link {
            kind,
            message: MessageRef {
                campaign,
                message_id,
                recipient_id,
                segment: segment.to_string(),
                variant: variant.to_string(),
                wave,
            },
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: LinkKind, extra: &str) -> Link {
        Link {
            kind,
            message: MessageRef {
                campaign: "spring-sale".into(),
                message_id: "0123456789abcdef0123456789abcdef".into(),
                recipient_id: "c-42".into(),
                segment: "vip".into(),
                variant: "b".into(),
                wave: 2,
            },
            extra: extra.into(),
        }
    }

    #[test]
    fn a_signed_link_reads_back() {
        let s = Signer::new(b"k");
        let l = link(LinkKind::Click, "https://shop.example.com/sale?x=1&y=ü");
        let t = s.sign(&l);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "URL-safe: {t}"
        );
        assert_eq!(s.verify(&t), Ok(l));
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let s = Signer::new(b"k");
        let t = s.sign(&link(LinkKind::Click, "https://shop.example.com/"));
        // Another key's token.
        let other = Signer::new(b"not k").sign(&link(LinkKind::Click, "https://evil.example/"));
        assert_eq!(s.verify(&other), Err(TokenError::BadSignature));
        // The payload swapped for another URL, the signature kept.
        let (_, tag) = t.split_once('.').unwrap();
        let evil = serde_json::to_vec(&Payload(
            LinkKind::Click,
            "spring-sale".into(),
            "c-42".into(),
            "vip/b".into(),
            "0123456789abcdef0123456789abcdef".into(),
            2,
            "https://evil.example/".into(),
        ))
        .unwrap();
        assert_eq!(
            s.verify(&format!("{}.{tag}", B64.encode(evil))),
            Err(TokenError::BadSignature)
        );
        // One flipped character of the signature.
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(s.verify(std::str::from_utf8(&flipped).unwrap()).is_err());
        for junk in ["", ".", "abc", "abc.def", &"x".repeat(MAX_TOKEN + 1)] {
            assert!(s.verify(junk).is_err(), "{junk:?}");
        }
    }
}
