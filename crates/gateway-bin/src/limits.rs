//! Per-key rate limits in process (one replica): token buckets for requests per minute
//! and tokens per minute. RPM is taken when a request is admitted; TPM is checked at
//! admission (the bucket must not be in debt) and charged with the real tokens when the
//! request settles, so a big answer delays the next request rather than being refused
//! halfway.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The buckets of one key.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    requests: f64,
    tokens: f64,
    last: Instant,
    primed: bool,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            state: Mutex::new(State {
                requests: 0.0,
                tokens: 0.0,
                last: Instant::now(),
                primed: false,
            }),
        }
    }
}

impl Limiter {
    /// Admit one request under `rpm` / `tpm` at `now`; on refusal, how long to wait.
    pub fn admit(&self, rpm: Option<u32>, tpm: Option<u64>, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        s.refill(rpm, tpm, now);
        if let Some(rpm) = rpm.filter(|r| *r > 0) {
            if s.requests < 1.0 {
                return Err(wait(1.0 - s.requests, f64::from(rpm)));
            }
        }
        if let Some(tpm) = tpm.filter(|t| *t > 0) {
            if s.tokens <= 0.0 {
                return Err(wait(1.0 - s.tokens, tpm as f64));
            }
        }
        if rpm.is_some() {
            s.requests -= 1.0;
        }
        Ok(())
    }

    /// Charge settled tokens to the TPM bucket.
    pub fn charge(&self, tpm: Option<u64>, tokens: u64, now: Instant) {
        if tpm.is_none() {
            return;
        }
        let mut s = self.state.lock();
        s.refill(None, tpm, now);
        s.tokens -= tokens as f64;
    }
}

impl State {
    fn refill(&mut self, rpm: Option<u32>, tpm: Option<u64>, now: Instant) {
        if !self.primed {
            self.requests = rpm.map_or(0.0, f64::from);
            self.tokens = tpm.map_or(0.0, |t| t as f64);
            self.primed = true;
            self.last = now;
            return;
        }
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if let Some(rpm) = rpm {
            let cap = f64::from(rpm);
            self.requests = (self.requests + secs * cap / 60.0).min(cap);
        }
        if let Some(tpm) = tpm {
            let cap = tpm as f64;
            self.tokens = (self.tokens + secs * cap / 60.0).min(cap);
        }
    }
}

/// Time to refill `deficit` units at `per_minute`.
fn wait(deficit: f64, per_minute: f64) -> Duration {
    Duration::from_secs_f64((deficit * 60.0 / per_minute).clamp(0.001, 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_bucket_refuses_then_refills() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.admit(Some(2), None, t0).is_ok());
        assert!(l.admit(Some(2), None, t0).is_ok());
        let wait = l.admit(Some(2), None, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(l.admit(Some(2), None, t0 + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn tpm_is_charged_after_the_fact() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.admit(None, Some(600), t0).is_ok());
        l.charge(Some(600), 1200, t0);
        // 600 in debt: one minute of refill (plus one token) to get back above zero.
        let wait = l.admit(None, Some(600), t0).unwrap_err();
        assert!(wait >= Duration::from_secs(60), "{wait:?}");
    }
}
