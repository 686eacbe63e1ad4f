//! The Generic Cell Rate Algorithm: a token bucket kept as one number per key, the theoretical
//! arrival time (TAT). A bucket whose TAT is `now` or earlier is full; each request admitted
//! moves the TAT one emission interval (`per / rate`) later; a request is refused when that
//! would put the TAT more than a full bucket (`burst` intervals) ahead of `now`.
//!
//! All times are nanoseconds since the Unix epoch.

use std::time::Duration;

/// A limit in GCRA terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two requests at the sustained rate (`per / rate`).
    interval: u64,
    /// Requests a full bucket holds.
    burst: u64,
    /// `burst * interval`: how far ahead of `now` the TAT may go.
    capacity: u64,
}

/// What one request gets, and what its bucket becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The key's TAT from now on (unchanged by a refusal, unless it had to be repaired).
    pub tat: u64,
    /// Requests that would still pass right now.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset: u64,
    /// Nanoseconds until a refused request would pass (0 when allowed).
    pub retry_after: u64,
}

impl Gcra {
    /// `rate` requests per `per`, `burst` at once. `Err` with the reason when the numbers do not
    /// make a usable limit.
    pub fn new(rate: u64, per: Duration, burst: u64) -> Result<Gcra, String> {
        let per = u64::try_from(per.as_nanos()).map_err(|_| "per: too long".to_string())?;
        let interval = per / rate.max(1);
        if interval == 0 {
            return Err(format!(
                "rate: {rate} per {per} ns is more than one request per nanosecond"
            ));
        }
        let capacity = burst.checked_mul(interval).ok_or_else(|| {
            "burst: a full bucket (burst × per / rate) must be under 584 years".to_string()
        })?;
        Ok(Gcra {
            interval,
            burst,
            capacity,
        })
    }

    /// Requests a full bucket holds (`RateLimit-Limit`).
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The decision for a request at `now` on a bucket whose TAT is `tat` (`None`: never seen,
    /// or idle long enough to be forgotten, which is the same thing: a full bucket).
    pub fn decide(&self, tat: Option<u64>, now: u64) -> Decision {
        // A TAT further ahead than a full bucket allows can only come from a wall clock that
        // stepped back; cap it, so the step costs at most one interval.
        let ceiling = now.saturating_add(self.capacity);
        let tat = tat.unwrap_or(now).clamp(now, ceiling);
        let next = tat.saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.capacity {
            Decision {
                allowed: true,
                tat: next,
                remaining: (self.capacity - ahead) / self.interval,
                reset: ahead,
                retry_after: 0,
            }
        } else {
            Decision {
                allowed: false,
                tat,
                remaining: 0,
                reset: tat - now,
                retry_after: ahead - self.capacity,
            }
        }
    }
}

/// Nanoseconds as whole seconds, rounded up (`Retry-After`, `RateLimit-Reset`).
pub fn seconds_up(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn gcra(rate: u64, per: &str, burst: u64) -> Gcra {
        Gcra::new(rate, crate::config::parse_duration(per).unwrap(), burst).unwrap()
    }

    /// Runs requests at the given offsets (ms from t0) through one bucket; returns which passed.
    fn run(g: &Gcra, at_ms: &[u64]) -> Vec<bool> {
        let t0 = 1_700_000_000 * S;
        let mut tat = None;
        at_ms
            .iter()
            .map(|ms| {
                let d = g.decide(tat, t0 + ms * MS);
                tat = Some(d.tat);
                d.allowed
            })
            .collect()
    }

    #[test]
    fn exactly_burst_requests_pass_from_a_burst() {
        for burst in [1, 2, 5, 50] {
            let g = gcra(1, "1h", burst);
            let passed = run(&g, &vec![0; burst as usize + 10]);
            assert_eq!(passed.iter().filter(|p| **p).count() as u64, burst);
            assert!(
                passed[..burst as usize].iter().all(|p| *p),
                "the first pass"
            );
        }
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        // 10 per second: one every 100 ms, two at once.
        let g = gcra(10, "1s", 2);
        let cases: &[(&[u64], &[bool])] = &[
            (&[0, 0, 0], &[true, true, false]),
            (&[0, 0, 99], &[true, true, false]),
            (&[0, 0, 100], &[true, true, true]),
            (&[0, 0, 100, 100], &[true, true, true, false]),
            (&[0, 0, 200, 200, 200], &[true, true, true, true, false]),
            // Idle for long: the bucket is full again, never fuller.
            (
                &[0, 0, 10_000, 10_000, 10_000],
                &[true, true, true, true, false],
            ),
            // At the sustained rate forever.
            (&[0, 100, 200, 300, 400, 500], &[true; 6]),
        ];
        for (at, want) in cases {
            assert_eq!(run(&g, at), *want, "requests at {at:?} ms");
        }
    }

    fn allow(tat: u64, remaining: u64, reset: u64) -> Decision {
        Decision {
            allowed: true,
            tat,
            remaining,
            reset,
            retry_after: 0,
        }
    }

    fn deny(tat: u64, reset: u64, retry_after: u64) -> Decision {
        Decision {
            allowed: false,
            tat,
            remaining: 0,
            reset,
            retry_after,
        }
    }

    #[test]
    fn quota_numbers() {
        let g = gcra(10, "1s", 3);
        let now = 1_000 * S;
        let cases = [
            // A new key: one interval used, two left, full again in one interval.
            (None, allow(now + 100 * MS, 2, 100 * MS)),
            // A TAT in the past is a full bucket.
            (Some(now - 5 * S), allow(now + 100 * MS, 2, 100 * MS)),
            (Some(now + 200 * MS), allow(now + 300 * MS, 0, 300 * MS)),
            // Empty: the next request fits once the TAT is within two intervals of now.
            (
                Some(now + 300 * MS),
                deny(now + 300 * MS, 300 * MS, 100 * MS),
            ),
            (
                Some(now + 250 * MS),
                deny(now + 250 * MS, 250 * MS, 50 * MS),
            ),
        ];
        for (tat, want) in cases {
            assert_eq!(g.decide(tat, now), want, "TAT {tat:?}");
        }
    }

    #[test]
    fn a_clock_that_steps_back_costs_at_most_one_interval() {
        let g = gcra(1, "1s", 5);
        let now = 1_000 * S;
        // The TAT was written an hour "later" than now: repaired to a just-empty bucket.
        let d = g.decide(Some(now + 3_600 * S), now);
        assert_eq!(d, deny(now + 5 * S, 5 * S, S));
        assert!(g.decide(Some(d.tat), now + S).allowed);
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(Gcra::new(2_000_000_000, Duration::from_secs(1), 1).is_err());
        assert!(Gcra::new(1, Duration::from_secs(3_600), u64::MAX / 1_000).is_err());
        assert!(Gcra::new(1, Duration::from_secs(1), 1).is_ok());
    }

    #[test]
    fn seconds_round_up() {
        let cases = [
            (0, 0),
            (1, 1),
            (S - 1, 1),
            (S, 1),
            (S + 1, 2),
            (59 * S + 1, 60),
        ];
        for (nanos, secs) in cases {
            assert_eq!(seconds_up(nanos), secs, "{nanos} ns");
        }
    }
}
