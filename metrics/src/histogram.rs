//! [`Seconds`]: a latency histogram of atomics.
//!
//! `prometheus_client`'s own histogram takes a lock per observation; this
//! one adds to atomic counters only (one bucket, the count and the sum in
//! nanoseconds), so observing on a hot path costs a few relaxed atomic adds.
//! A scrape reads the counters one by one: it may see an observation in the
//! count but not yet in its bucket, which Prometheus tolerates (the next
//! scrape is exact).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) of the buckets: 100 µs to 10 s, roughly ×2.5.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Default)]
struct Inner {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram of durations in seconds; clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Seconds {
    inner: Arc<Inner>,
}

impl Seconds {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Seconds {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Seconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder takes per-bucket counts and makes them cumulative.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, upper) in BUCKETS.iter().chain(std::iter::once(&f64::MAX)).enumerate() {
            let n = self.inner.buckets[i].load(Ordering::Relaxed);
            count += n;
            buckets.push((*upper, n));
        }
        // The count is the +Inf bucket, so the two always agree.
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_cumulative_buckets_with_their_sum() {
        let h = Seconds::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut reg = Registry::default();
        reg.register("t", "test", h.clone());
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(out.contains("t_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.0025\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"10.0\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_count 3\n"), "{out}");
        assert!(out.contains("t_sum 60.00305\n"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
