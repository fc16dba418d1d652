//! The last hour of a service's own metrics, sampled in process for the console's charts.
//!
//! A sampler task asks the service every interval for its values — rates and percentiles it
//! derives itself from its counters since the sample before — and keeps the newest
//! [`HISTORY_SAMPLES`]. Bounded by construction: one hour at the default interval, whatever the
//! load. A restart starts the history afresh (Prometheus keeps the long one).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How often services sample by default.
pub const HISTORY_INTERVAL: Duration = Duration::from_secs(10);
/// The most samples kept: one hour at the default interval.
pub const HISTORY_SAMPLES: usize = 360;

/// One sample: when, and each named value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub values: Vec<(String, f64)>,
}

/// One chart on the console's charts page: its title, unit, and the series it draws — named,
/// or every value whose name starts with `prefix` (one line each: aborts by reason, say).
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: &'static str,
    pub unit: &'static str,
    pub series: Vec<&'static str>,
    pub prefix: Option<&'static str>,
}

#[derive(Debug)]
pub struct History {
    interval: Duration,
    capacity: usize,
    charts: Vec<Chart>,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Keeps an hour's worth of samples taken every `interval` (at most [`HISTORY_SAMPLES`] ×
    /// 10: a test may sample fast).
    pub fn new(interval: Duration, charts: Vec<Chart>) -> Arc<Self> {
        let interval = interval.max(Duration::from_millis(100));
        let per_hour = 3_600_000 / interval.as_millis().max(1);
        let capacity =
            usize::try_from(per_hour).unwrap_or(usize::MAX).clamp(1, HISTORY_SAMPLES * 10);
        Arc::new(History { interval, capacity, charts, samples: Mutex::new(VecDeque::new()) })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn len(&self) -> usize {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `GET /v1/history`: the charts and the samples, oldest first.
    pub fn json(&self) -> Value {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let samples: Vec<Value> = samples
            .iter()
            .map(|s| {
                let values: serde_json::Map<String, Value> = s
                    .values
                    .iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(name, v)| (name.clone(), json!(v)))
                    .collect();
                json!({ "at_ms": s.at_ms, "values": values })
            })
            .collect();
        let charts: Vec<Value> = self
            .charts
            .iter()
            .map(|c| json!({ "title": c.title, "unit": c.unit, "series": c.series, "prefix": c.prefix }))
            .collect();
        json!({
            "interval_ms": u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            "charts": charts,
            "samples": samples,
        })
    }

    /// Samples `read` every interval until the history is dropped by everyone else.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        mut read: impl FnMut(Duration) -> Vec<(String, f64)> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut last = tokio::time::Instant::now();
            loop {
                ticks.tick().await;
                let Some(history) = weak.upgrade() else { return };
                let now = tokio::time::Instant::now();
                let values = read(now - last);
                last = now;
                history.push(Sample { at_ms: now_ms(), values });
            }
        })
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The `q` quantile (0 < q ≤ 1) of the observations between two readings of a cumulative
/// histogram (`bounds[i]` the upper bound of bucket `i`; counts cumulative, Prometheus style),
/// as the upper bound of the bucket it falls in; `None` with no observation in between, and
/// `f64::INFINITY` past the last bound.
pub fn quantile(bounds: &[f64], before: &[u64], after: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    for (i, bound) in bounds.iter().enumerate() {
        let inside =
            after.get(i).copied().unwrap_or(0).saturating_sub(before.get(i).copied().unwrap_or(0));
        if inside >= rank {
            return Some(*bound);
        }
    }
    Some(f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_an_hour_and_drops_the_oldest() {
        let history = History::new(Duration::from_secs(10), vec![]);
        for at_ms in 0..400 {
            history.push(Sample { at_ms, values: vec![("x".into(), 1.0)] });
        }
        assert_eq!(history.len(), HISTORY_SAMPLES);
        let json = history.json();
        assert_eq!(json["samples"][0]["at_ms"], 40);
        assert_eq!(json["samples"][HISTORY_SAMPLES - 1]["at_ms"], 399);
        // Fast sampling is capped too.
        let fast = History::new(Duration::from_millis(1), vec![]);
        for at_ms in 0..40_000 {
            fast.push(Sample { at_ms, values: vec![] });
        }
        assert_eq!(fast.len(), HISTORY_SAMPLES * 10);
    }

    #[test]
    fn values_that_are_not_numbers_are_left_out() {
        let history = History::new(HISTORY_INTERVAL, vec![]);
        history.push(Sample { at_ms: 1, values: vec![("a".into(), f64::NAN), ("b".into(), 2.0)] });
        let json = history.json();
        assert!(json["samples"][0]["values"].get("a").is_none());
        assert_eq!(json["samples"][0]["values"]["b"], 2.0);
    }

    #[test]
    fn quantiles_come_from_the_interval_only() {
        let bounds = [0.001, 0.01, 0.1];
        // Before: 100 fast observations. Between: 10 more, 9 at ≤ 10 ms, 1 at ≤ 100 ms.
        let before = [100, 100, 100];
        let after = [100, 109, 110];
        assert_eq!(quantile(&bounds, &before, &after, 10, 0.5), Some(0.01));
        assert_eq!(quantile(&bounds, &before, &after, 10, 0.99), Some(0.1));
        assert_eq!(quantile(&bounds, &before, &after, 0, 0.5), None);
        // Beyond the last bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0], &[0, 0, 0], 3, 0.5), Some(f64::INFINITY));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_samples_every_interval() {
        let history = History::new(Duration::from_secs(10), vec![]);
        let mut n = 0.0;
        let _task = history.spawn_sampler(move |since| {
            n += 1.0;
            vec![("n".into(), n), ("since_s".into(), since.as_secs_f64())]
        });
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(history.len(), 3);
        let json = history.json();
        assert_eq!(json["samples"][2]["values"]["n"], 3.0);
        assert_eq!(json["samples"][2]["values"]["since_s"], 10.0);
    }
}
