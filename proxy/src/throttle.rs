//! How much one agent may add to the decision log.
//!
//! Owns: a per-agent token bucket of stored bytes, in this replica's memory. Every decision record charges
//! its agent the size of the policy input it stores (itself bounded by `audit::MAX_STORED_INPUT`); an agent
//! whose bucket is in debt is refused `429 rate_limited` before its body is parsed or judged, with
//! `Retry-After` saying when the bucket is back above zero. The bucket holds a minute's worth, so bursts of
//! ordinary requests pass and only a sustained flood of large records is slowed. Several replicas each keep
//! their own buckets: the cap is per replica.
//! Must not: touch the store, or refuse anything but further intake (a request already admitted is always
//! recorded, whatever its size).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Past this many buckets, full ones (agents idle for a minute or more) are dropped.
const PRUNE_ABOVE: usize = 10_000;

pub struct StoredBytes {
    per_minute: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

struct Bucket {
    /// Bytes the agent may still add; negative while in debt.
    level: f64,
    at: Instant,
}

impl StoredBytes {
    pub fn new(per_minute: u64) -> StoredBytes {
        StoredBytes {
            per_minute: per_minute as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.level = (bucket.level + elapsed * self.per_minute / 60.0).min(self.per_minute);
        bucket.at = now;
    }

    /// `None` when `agent` may store more; otherwise how long until it may.
    pub fn check(&self, agent: Uuid) -> Option<Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.get_mut(&agent)?;
        self.refill(bucket, now);
        (bucket.level < 0.0)
            .then(|| Duration::from_secs_f64(-bucket.level * 60.0 / self.per_minute))
    }

    /// Charges `agent` for a record of `bytes`.
    pub fn charge(&self, agent: Uuid, bytes: usize) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let full = self.per_minute;
            let per_minute = self.per_minute;
            buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.level + elapsed * per_minute / 60.0 < full
            });
        }
        let bucket = buckets.entry(agent).or_insert(Bucket {
            level: self.per_minute,
            at: now,
        });
        self.refill(bucket, now);
        bucket.level -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_in_debt_waits_others_do_not() {
        let stored = StoredBytes::new(60_000); // 1000 bytes a second
        let (flood, quiet) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            stored.check(flood),
            None,
            "a new agent starts with a full bucket"
        );
        stored.charge(flood, 50_000);
        assert_eq!(stored.check(flood), None, "within its minute's worth");
        stored.charge(flood, 20_000);
        let wait = stored.check(flood).expect("10 000 bytes in debt");
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        stored.charge(quiet, 1_000);
        assert_eq!(stored.check(quiet), None);
    }
}
