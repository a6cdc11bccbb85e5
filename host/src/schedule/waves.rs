//! Waves: a campaign goes out to growing shares of its audience (1%, then
//! 5%, ...), each wave a random but reproducible sample. Wave membership
//! is a pure function of (campaign, row index, audience size): the row's
//! place in a permutation of [0, rows) keyed by the campaign id, so every
//! wave's size is exact (rounding aside) and the same on every run.
//!
//! The permutation is a small balanced Feistel network over the next even
//! power of two with cycle walking (Black and Rogaway, "Ciphers with
//! Arbitrary Finite Domains"), its round function xxh3 keyed by the
//! campaign: a sampling device, not encryption, which is why it is a few
//! lines here rather than a format-preserving-encryption crate.

use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Debug, Clone, PartialEq)]
pub struct WavePlan {
    /// Cumulative shares, increasing, the last 1.0.
    pub shares: Vec<f64>,
    /// Campaign time between the start of one wave and the next (ms).
    pub pause_ms: i64,
}

fn permute(i: u64, n: u64, key: u64) -> u64 {
    let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut x = i;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = xxh3_64_with_seed(&r.to_le_bytes(), key ^ round) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << half) | r;
        // Cycle walking: outside [0, n), permute again until inside.
        if x < n {
            return x;
        }
    }
}

impl WavePlan {
    /// The wave (0-based) of row `index` among `rows` in campaign `seed`.
    pub fn wave_of(&self, campaign: &str, index: u64, rows: u64) -> u32 {
        let key = xxhash_rust::xxh3::xxh3_64(campaign.as_bytes());
        let place = permute(index, rows.max(index + 1), key);
        self.shares
            .iter()
            .position(|s| place < (s * rows as f64).round() as u64)
            .unwrap_or(self.shares.len() - 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_have_exact_sizes_and_are_reproducible() {
        let plan = WavePlan {
            shares: vec![0.01, 0.05, 0.25, 1.0],
            pause_ms: 0,
        };
        let n = 10_007;
        let mut sizes = [0u64; 4];
        for i in 0..n {
            sizes[plan.wave_of("spring-sale", i, n) as usize] += 1;
        }
        assert_eq!(sizes, [100, 400, 2002, 7505]);
        let again: Vec<u32> = (0..50).map(|i| plan.wave_of("spring-sale", i, n)).collect();
        let same: Vec<u32> = (0..50).map(|i| plan.wave_of("spring-sale", i, n)).collect();
        assert_eq!(again, same);
        let other: Vec<u32> = (0..50).map(|i| plan.wave_of("autumn", i, n)).collect();
        assert_ne!(again, other, "another campaign samples differently");
        // A permutation: every place taken once.
        let mut seen = vec![false; 1000];
        for i in 0..1000 {
            let p = permute(i, 1000, 7) as usize;
            assert!(!seen[p]);
            seen[p] = true;
        }
    }
}
