//! Token bucket for AWS IoT Core's per-connection limits (100 publishes/s, 512 KiB/s).
//!
//! Pure: the caller passes the current time, so tests are exact. Two buckets refill
//! continuously; a publish takes one token from the first and its size from the second. A
//! message larger than the byte bucket's capacity is allowed once the bucket is full (otherwise
//! it could never go), which still keeps the average under the limit.

use std::time::{Duration, Instant};

/// Limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub publishes_per_sec: u32,
    pub bytes_per_sec: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            publishes_per_sec: 100,
            bytes_per_sec: 512 * 1024,
        }
    }
}

/// The two buckets.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limits: Option<RateLimits>,
    publishes: f64,
    bytes: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full buckets at `now`; `None` limits = unlimited (benchmarks, local brokers).
    pub fn new(limits: Option<RateLimits>, now: Instant) -> TokenBucket {
        TokenBucket {
            publishes: limits.map_or(0.0, |l| f64::from(l.publishes_per_sec)),
            bytes: limits.map_or(0.0, |l| l.bytes_per_sec as f64),
            limits,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, l: RateLimits) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        let pcap = f64::from(l.publishes_per_sec);
        let bcap = l.bytes_per_sec as f64;
        self.publishes = (self.publishes + dt * pcap).min(pcap);
        self.bytes = (self.bytes + dt * bcap).min(bcap);
    }

    /// Takes one publish of `bytes` if allowed now; otherwise returns how long to wait.
    pub fn try_take(&mut self, now: Instant, bytes: usize) -> Result<(), Duration> {
        let Some(l) = self.limits else {
            return Ok(());
        };
        self.refill(now, l);
        let bcap = l.bytes_per_sec as f64;
        let need_bytes = (bytes as f64).min(bcap);
        let pwait = if self.publishes >= 1.0 {
            0.0
        } else {
            (1.0 - self.publishes) / f64::from(l.publishes_per_sec)
        };
        let bwait = if self.bytes >= need_bytes {
            0.0
        } else {
            (need_bytes - self.bytes) / bcap
        };
        let wait = pwait.max(bwait);
        if wait > 0.0 {
            // Round up to a whole millisecond so a caller sleeping `wait` is never early.
            return Err(
                Duration::from_millis((wait * 1000.0).ceil() as u64).max(Duration::from_millis(1))
            );
        }
        self.publishes -= 1.0;
        self.bytes -= bytes as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hundred_publishes_per_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(RateLimits::default()), t0);
        for _ in 0..100 {
            b.try_take(t0, 10).unwrap();
        }
        let wait = b.try_take(t0, 10).unwrap_err();
        assert_eq!(wait, Duration::from_millis(10));
        b.try_take(t0 + wait, 10).unwrap();
        assert!(b.try_take(t0 + wait, 10).is_err());
        // Over one simulated second at most ~100 more fit.
        let mut sent = 0;
        let mut now = t0 + wait;
        let end = now + Duration::from_secs(1);
        while now < end {
            match b.try_take(now, 10) {
                Ok(()) => sent += 1,
                Err(w) => now += w,
            }
        }
        assert!((99..=101).contains(&sent), "{sent}");
    }

    #[test]
    fn bytes_per_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(RateLimits::default()), t0);
        for _ in 0..4 {
            b.try_take(t0, 128 * 1024).unwrap();
        }
        let wait = b.try_take(t0, 128 * 1024).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        assert!(b.try_take(t0 + wait, 128 * 1024).is_ok());
    }

    #[test]
    fn oversized_message_waits_for_a_full_bucket_only() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(RateLimits::default()), t0);
        assert!(b.try_take(t0, 1024 * 1024).is_ok());
        assert!(b.try_take(t0, 1).is_err());
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(None, t0);
        for _ in 0..10_000 {
            b.try_take(t0, 1 << 20).unwrap();
        }
    }
}
