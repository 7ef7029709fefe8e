//! Per-client request rate limits of the control-plane API: a token bucket per
//! client id (`per_second` refill, `burst` capacity). A client over its limit gets a
//! 429 (`rate_limited`, which the oblien client raises as `RateLimitError`) with
//! `Retry-After`, and the request does nothing.
//!
//! `governor` (the GCRA implementation most Rust services use, e.g. behind
//! `tower_governor`) keeps one small state per key, lock-free.

use crate::error::ApiError;
use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;
use std::num::NonZeroU32;

/// A client's allowance; `per_second` 0: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    /// Requests a client may make at once above the steady rate.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 50,
            burst: 200,
        }
    }
}

pub struct RateLimiter {
    limit: RateLimit,
    keyed: Option<DefaultKeyedRateLimiter<String>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        let keyed = NonZeroU32::new(limit.per_second).map(|rate| {
            let burst = NonZeroU32::new(limit.burst.max(limit.per_second)).unwrap_or(rate);
            governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimiter { limit, keyed }
    }

    /// Count one request of `client_id`; over the limit: the 429 to answer.
    pub fn check(&self, client_id: &str) -> Result<(), ApiError> {
        let Some(keyed) = &self.keyed else {
            return Ok(());
        };
        match keyed.check_key(&client_id.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "too many requests: this client may make {} per second (bursts of {}); \
                         retry in {secs} s",
                        self.limit.per_second, self.limit.burst
                    ),
                )
                .with_details(json!({
                    "retry_after": secs,
                    "per_second": self.limit.per_second,
                    "burst": self.limit.burst,
                }))
                .with_retry_after(secs))
            }
        }
    }

    /// Forget clients whose bucket is full again (keeps the map small).
    pub fn shrink(&self) {
        if let Some(k) = &self.keyed {
            k.retain_recent();
            k.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_burst_is_refused_and_others_are_not() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            l.check("a").unwrap();
        }
        let e = l.check("a").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "rate_limited");
        assert_eq!(e.retry_after, Some(1));
        l.check("b").unwrap();
        let off = RateLimiter::new(RateLimit {
            per_second: 0,
            burst: 0,
        });
        for _ in 0..1000 {
            off.check("a").unwrap();
        }
    }
}
