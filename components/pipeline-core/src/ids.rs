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
/// in one campaign, who is on audience line `line`: the delivery ledger's
/// key and the email's Message-ID. 32 hex digits:
///
/// * 8: a tag of the campaign, so one campaign's messages are one key range;
/// * 10: the audience line, so a batch's messages (consecutive lines) sit
///   side by side in the ledger's index instead of on hundreds of random
///   pages, which is what made every claim rewrite whole pages;
/// * 14: a digest of (campaign, recipient, message), which tells apart
///   campaigns whose tags collide and anyone who moved onto a line.
///
/// The line is as stable as the recipient id: intake rejects an id seen
/// before on another line as a duplicate, so (campaign, recipient, message)
/// and this id name each other one to one.
pub fn message_id(campaign: &str, line: u64, recipient_id: &str, message_key: &str) -> String {
    let check = digest(&[campaign, recipient_id, message_key]) >> 72;
    format!(
        "{}{:010x}{check:014x}",
        campaign_tag(campaign),
        line & LINE_MASK
    )
}

/// Lines beyond 2^40 (a trillion) wrap; the digest still keeps ids apart.
const LINE_MASK: u64 = (1 << 40) - 1;

/// The first 8 hex digits of every message id of `campaign`.
pub fn campaign_tag(campaign: &str) -> String {
    format!("{:08x}", (digest(&[campaign]) >> 96) as u32)
}

/// `[low, high)` bounds of the message ids of `campaign`, for range scans
/// of a ledger keyed by message id ('g' sorts after every hex digit).
pub fn campaign_id_range(campaign: &str) -> (String, String) {
    let tag = campaign_tag(campaign);
    (tag.clone(), format!("{tag}g"))
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
        let id = |c, line, r, k| message_id(c, line, r, k);
        assert_eq!(id("c", 1, "r1", "s/a"), id("c", 1, "r1", "s/a"));
        assert_ne!(id("c", 1, "r1", "s/a"), id("c", 1, "r1", "s/b"));
        assert_ne!(id("ab", 1, "c", "x"), id("a", 1, "bc", "x"));
        // Another recipient on the same line is another message.
        assert_ne!(id("c", 1, "r1", "s/a"), id("c", 1, "r2", "s/a"));
        assert_eq!(id("c", 1, "r1", "s/a").len(), 32);
        assert!(
            id("c", u64::MAX, "r1", "s/a")
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
    }

    #[test]
    fn a_campaigns_ids_sort_by_line_within_its_range() {
        let (low, high) = campaign_id_range("spring");
        let ids: Vec<String> = (0..1000u64)
            .map(|line| message_id("spring", line, &format!("r{}", 999 - line), "s/a"))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by line");
        assert!(ids.iter().all(|id| low <= *id && *id < high));
        let other = message_id("autumn", 5, "r5", "s/a");
        assert!(
            !(low <= other && other < high) || campaign_tag("autumn") == campaign_tag("spring")
        );
    }

    #[test]
    fn buckets_split_evenly() {
        let hits = (0..10_000)
            .filter(|i| bucket("c", "s", &format!("r{i}"), 2) == 0)
            .count();
        assert!((4_700..5_300).contains(&hits), "{hits}");
    }
}
