//! Which failures are worth retrying, and how long to wait before the next try.

use std::time::Duration;

use rand::Rng;

/// A failed export attempt.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// The OTLP spec says this failure may succeed later.
    pub retryable: bool,
    /// Server-requested delay (HTTP `Retry-After`, gRPC `RetryInfo`).
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    pub fn transient(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after,
        }
    }
}

/// gRPC codes the OTLP spec lists as retryable. `ResourceExhausted` is only
/// retryable when the server sent `RetryInfo`.
pub fn grpc_code_retryable(code: tonic::Code, has_retry_info: bool) -> bool {
    use tonic::Code::*;
    match code {
        Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss => true,
        ResourceExhausted => has_retry_info,
        _ => false,
    }
}

/// HTTP statuses the OTLP spec lists as retryable.
pub fn http_status_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After` as delay-seconds (the HTTP-date form is rare for OTLP
/// receivers and is treated as absent).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential back-off with ±20% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial.max(Duration::from_millis(10)),
            max: max.max(initial),
        }
    }

    /// The delay before the next attempt; a server hint wins when larger.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::rng().random_range(0.8..1.2);
        let delay = base.mul_f64(jitter).min(self.max);
        match hint {
            Some(h) if h > delay => h,
            _ => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay(None)).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[2] >= Duration::from_millis(320));
        assert!(d[5] <= Duration::from_secs(1));
    }

    #[test]
    fn server_hint_wins_when_longer() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn classification_follows_the_otlp_spec() {
        assert!(grpc_code_retryable(tonic::Code::Unavailable, false));
        assert!(!grpc_code_retryable(tonic::Code::InvalidArgument, false));
        assert!(!grpc_code_retryable(tonic::Code::ResourceExhausted, false));
        assert!(grpc_code_retryable(tonic::Code::ResourceExhausted, true));
        assert!(http_status_retryable(503) && http_status_retryable(429));
        assert!(!http_status_retryable(400));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
