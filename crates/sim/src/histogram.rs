//! A log-linear histogram: percentiles over millions of samples in constant memory.
//! Values are bucketed with 1/16 relative precision (16 linear sub-buckets per power of two).

const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// 16 exact buckets for 0..16, then 16 per power of two from 2^4 to 2^63.
const BUCKETS: usize = (64 - SUB_BUCKET_BITS as usize + 1) * (1 << SUB_BUCKET_BITS);

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return usize::try_from(value).expect("below 16");
    }
    let magnitude = 63 - value.leading_zeros(); // ≥ SUB_BUCKET_BITS
    let shift = magnitude - SUB_BUCKET_BITS;
    let sub = (value >> shift) - SUB_BUCKETS; // 0..16
    usize::try_from(u64::from(shift + 1) * SUB_BUCKETS + sub).expect("bucket index is small")
}

/// The lowest value that falls in `bucket`.
fn bucket_floor(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_BUCKETS {
        return bucket;
    }
    let shift = bucket / SUB_BUCKETS - 1;
    let sub = bucket % SUB_BUCKETS;
    (SUB_BUCKETS + sub) << shift
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), to within the bucket's precision; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_floor(bucket).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_sixteenth() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((4_700..=5_000).contains(&p50), "p50 {p50}");
        assert!((9_300..=9_900).contains(&p99), "p99 {p99}");
        assert_eq!(h.max(), 10_000);
        // 10_000 falls in the bucket [9_728, 10_240); the top quantile reports its floor.
        assert_eq!(h.quantile(1.0), 9_728);
    }

    #[test]
    fn every_value_lands_in_a_bucket_whose_floor_is_not_above_it() {
        for v in [0, 1, 15, 16, 17, 31, 32, 1000, u64::MAX / 3, u64::MAX] {
            let b = bucket_of(v);
            assert!(b < BUCKETS);
            assert!(bucket_floor(b) <= v, "value {v} bucket {b}");
        }
    }

    #[test]
    fn empty_and_merged() {
        let mut a = Histogram::default();
        assert_eq!(a.quantile(0.99), 0);
        let mut b = Histogram::default();
        b.record(7);
        a.merge(&b);
        assert_eq!((a.count(), a.quantile(0.5)), (1, 7));
    }
}
