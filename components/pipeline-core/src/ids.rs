//! Stable identities. A redelivered batch must produce exactly the same ids,
//! so everything here is a pure function of campaign data, never of time or
//! randomness. xxh3 is specified and stable across versions and platforms.

use xxhash_rust::xxh3::xxh3_128;

fn digest(parts: &[&str]) -> u128 {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        buf.extend_from_slice(p.as_bytes());
        buf.push(0); // separator: ("ab","c") and ("a","bc") must differ
    }
    xxh3_128(&buf)
}

/// The id of the message `message_key` (`segment/variant`) to one recipient
/// in one campaign; the delivery ledger's key and the email's Message-ID.
pub fn message_id(campaign: &str, recipient_id: &str, message_key: &str) -> String {
    format!("{:032x}", digest(&[campaign, recipient_id, message_key]))
}

/// A deterministic point in `[0, total)` for a recipient, used to split A/B
/// variants by weight: the same recipient always gets the same variant.
pub fn bucket(campaign: &str, segment: &str, recipient_id: &str, total: u64) -> u64 {
    debug_assert!(total > 0);
    (digest(&[campaign, segment, recipient_id]) % u128::from(total)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(message_id("c", "r1", "s/a"), message_id("c", "r1", "s/a"));
        assert_ne!(message_id("c", "r1", "s/a"), message_id("c", "r1", "s/b"));
        assert_ne!(message_id("ab", "c", "x"), message_id("a", "bc", "x"));
        assert_eq!(message_id("c", "r1", "s/a").len(), 32);
    }

    #[test]
    fn buckets_split_evenly() {
        let hits = (0..10_000)
            .filter(|i| bucket("c", "s", &format!("r{i}"), 2) == 0)
            .count();
        assert!((4_700..5_300).contains(&hits), "{hits}");
    }
}
