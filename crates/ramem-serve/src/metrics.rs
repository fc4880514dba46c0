//! What `GET /metrics` reports, in the Prometheus text format: requests by
//! route and status, request latency and batch sizes as histograms, the
//! queue's depth and the memory's size.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size histogram's buckets.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram: counts per upper bound, the sum and the count.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The server's counters.
pub struct Metrics {
    /// (route, status) -> requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route -> latency histogram.
    latency: Mutex<BTreeMap<String, Histogram>>,
    batches: Mutex<Histogram>,
    images: AtomicU64,
    /// Nanoseconds the worker spent running batches.
    busy_nanos: AtomicU64,
    queue_depth: AtomicU64,
    memory_entries: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Mutex::default(),
            batches: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            images: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            memory_entries: AtomicU64::new(0),
        }
    }
}

/// A lock whose holder panicked still holds counters worth reading.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// One batch of `size` jobs (`images` of them images) run by the
    /// worker in `seconds`.
    pub fn batch(&self, size: usize, images: usize, seconds: f64) {
        lock(&self.batches).observe(size as f64);
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        self.busy_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Jobs waiting in the queue.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    /// The memory's committed entries.
    pub fn set_memory_entries(&self, entries: u64) {
        self.memory_entries.store(entries, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ramem_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE ramem_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "ramem_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP ramem_request_duration_seconds Time from request to response.\n");
        out.push_str("# TYPE ramem_request_duration_seconds histogram\n");
        for (route, histogram) in lock(&self.latency).iter() {
            histogram.write(
                &mut out,
                "ramem_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP ramem_batch_size Jobs per batch run by the encoder and search.\n");
        out.push_str("# TYPE ramem_batch_size histogram\n");
        lock(&self.batches).write(&mut out, "ramem_batch_size", "");
        out.push_str("# HELP ramem_images_total Images encoded.\n");
        out.push_str("# TYPE ramem_images_total counter\n");
        let _ = writeln!(
            out,
            "ramem_images_total {}",
            self.images.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP ramem_worker_busy_seconds_total Time the worker spent running batches.\n",
        );
        out.push_str("# TYPE ramem_worker_busy_seconds_total counter\n");
        let _ = writeln!(
            out,
            "ramem_worker_busy_seconds_total {}",
            self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        out.push_str("# HELP ramem_queue_depth Jobs waiting for the worker.\n");
        out.push_str("# TYPE ramem_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "ramem_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out.push_str("# HELP ramem_memory_entries Committed entries of the memory.\n");
        out.push_str("# TYPE ramem_memory_entries gauge\n");
        let _ = writeln!(
            out,
            "ramem_memory_entries {}",
            self.memory_entries.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_keyed_by_route_and_status() {
        let m = Metrics::default();
        m.request("/v1/classify", 200, 0.003);
        m.request("/v1/classify", 200, 0.2);
        m.request("/v1/classify", 413, 0.0001);
        m.batch(3, 2, 0.5);
        let text = m.render();
        assert!(text.contains("ramem_requests_total{route=\"/v1/classify\",status=\"200\"} 2"));
        assert!(text.contains("ramem_requests_total{route=\"/v1/classify\",status=\"413\"} 1"));
        assert!(text.contains(
            "ramem_request_duration_seconds_bucket{route=\"/v1/classify\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "ramem_request_duration_seconds_bucket{route=\"/v1/classify\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("ramem_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("ramem_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("ramem_images_total 2"));
        assert!(text.contains("ramem_worker_busy_seconds_total 0.5"));
    }
}
