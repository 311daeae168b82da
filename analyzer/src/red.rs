//! RED aggregation: calls, errors (status code) and a duration histogram per (service, span name, span kind,
//! status code, configured dimensions), with the semantics of the OpenTelemetry Collector's spanmetrics
//! connector. One [`RedTable`] per shard; [`RedTable::export`] turns it into rows for a snapshot.

use std::sync::Arc;

use std::hash::BuildHasher;

use hashbrown::{HashMap, HashTable};

use crate::budget::SeriesBudget;
use crate::config::RedConfig;
use crate::intern::Interner;
use crate::records::{Span, SpanBatch, SpanKind, StatusCode};

/// Series key: interned ids plus the enums. `dims` is the interned id of the joined dimension values.
#[derive(Clone, Copy)]
struct Key {
    service: u32,
    name: u32,
    kind: SpanKind,
    status: StatusCode,
    dims: u32,
    overflow: bool,
}

impl Key {
    /// The key with its span name's bytes in place of the name's id: what the index hashes.
    fn probe<'a>(&self, names: &'a Interner) -> Probe<'a> {
        Probe {
            service: self.service,
            name: names.resolve(self.name).as_bytes(),
            kind: self.kind,
            status: self.status,
            dims: self.dims,
            overflow: self.overflow,
        }
    }
}

/// A series key with the span name as bytes: a span's series is found by one lookup, without first
/// looking up the name's id.
#[derive(PartialEq)]
struct Probe<'a> {
    service: u32,
    name: &'a [u8],
    kind: SpanKind,
    status: StatusCode,
    dims: u32,
    overflow: bool,
}

impl std::hash::Hash for Probe<'_> {
    /// The fixed-size fields as two words, then the name's bytes: three writes to the hasher instead of
    /// seven (this hash is taken for every span).
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.service) | u64::from(self.dims) << 32);
        h.write_u32(
            u32::from(self.kind as u8) | u32::from(self.status as u8) << 8 | u32::from(self.overflow) << 16,
        );
        h.write(self.name);
    }
}

/// A duration histogram with fixed bounds (in the configured unit): per-bucket (not cumulative) counts,
/// the last bucket being +Inf. Only the range from the first to the last non-empty bucket is stored
/// (every other bucket is empty), since a series' latencies fill a few neighbouring buckets: a series is
/// kept by every shard it has spans on and in snapshots, so each unused bucket would be paid many times.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Index of the bucket `counts[0]` holds.
    first: u32,
    /// Counts of buckets `first..first + counts.len()`; floats because Tempo-style sampling
    /// multipliers weight them.
    counts: Box<[f64]>,
    pub sum: f64,
    pub count: f64,
}

impl PartialEq for Histogram {
    /// Equal counts per bucket, however much of the range each stores.
    fn eq(&self, o: &Histogram) -> bool {
        let n = self.slots().max(o.slots());
        self.sum == o.sum && self.count == o.count && (0..n).all(|i| self.bucket(i) == o.bucket(i))
    }
}

impl Histogram {
    /// A histogram of the per-bucket `counts` (bucket 0 first), holding only their non-zero range.
    pub fn from_counts(counts: &[f64], sum: f64, count: f64) -> Histogram {
        let Some(first) = counts.iter().position(|&c| c != 0.0) else {
            return Histogram {
                sum,
                count,
                ..Histogram::default()
            };
        };
        let last = counts.iter().rposition(|&c| c != 0.0).unwrap_or(first);
        Histogram {
            first: first as u32,
            counts: counts[first..=last].into(),
            sum,
            count,
        }
    }

    /// The count of bucket `i` (0 for a bucket outside the stored range).
    #[inline]
    pub fn bucket(&self, i: usize) -> f64 {
        i.checked_sub(self.first as usize)
            .and_then(|j| self.counts.get(j))
            .copied()
            .unwrap_or(0.0)
    }

    /// One past the last bucket that may be non-empty.
    pub fn slots(&self) -> usize {
        if self.counts.is_empty() {
            0
        } else {
            self.first as usize + self.counts.len()
        }
    }

    /// The per-bucket counts from bucket 0 up to the last non-empty one (at least `slots` of them).
    pub fn counts(&self, slots: usize) -> Vec<f64> {
        (0..self.slots().max(slots)).map(|i| self.bucket(i)).collect()
    }

    /// Grows the stored range to cover buckets `lo..hi` too.
    #[cold]
    fn grow(&mut self, lo: usize, hi: usize) {
        let (lo, hi) = if self.counts.is_empty() {
            (lo, hi)
        } else {
            (lo.min(self.first as usize), hi.max(self.slots()))
        };
        let counts = (lo..hi).map(|i| self.bucket(i)).collect();
        self.first = lo as u32;
        self.counts = counts;
    }

    /// Records `v`: Prometheus `le` semantics, an observation equal to a bound falls in that bound's bucket.
    #[inline]
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        self.observe_weighted(bounds, v, 1.0);
    }

    /// Records `v` as `weight` observations.
    #[inline]
    pub fn observe_weighted(&mut self, bounds: &[f64], v: f64, weight: f64) {
        let i = bounds.partition_point(|&b| b < v);
        // Below `first`, the subtraction wraps past the end: outside the range either way.
        match self.counts.get_mut(i.wrapping_sub(self.first as usize)) {
            Some(c) => *c += weight,
            None => {
                self.grow(i, i + 1);
                self.counts[i - self.first as usize] += weight;
            }
        }
        self.sum += v * weight;
        self.count += weight;
    }

    pub fn merge(&mut self, other: &Histogram) {
        self.add(other, 1.0);
    }

    /// Adds `sign` times `other`, bucket by bucket (`sign` -1: takes an earlier state away).
    pub fn add(&mut self, other: &Histogram, sign: f64) {
        for (a, b) in self.cover(other).iter_mut().zip(&other.counts) {
            *a += sign * b;
        }
        self.sum += sign * other.sum;
        self.count += sign * other.count;
    }

    /// The stored counts of the buckets `other` stores, the range grown to hold them first.
    fn cover(&mut self, other: &Histogram) -> &mut [f64] {
        if other.counts.is_empty() {
            return &mut [];
        }
        let (lo, hi) = (other.first as usize, other.slots());
        if self.counts.is_empty() || lo < self.first as usize || hi > self.slots() {
            self.grow(lo, hi);
        }
        &mut self.counts[lo - self.first as usize..]
    }

    /// Adds what was added to `prev` to make `cur` (`prev` an earlier state of the same counters), never
    /// below zero per bucket: a window's delta summed into a total with no histogram made for it.
    pub fn merge_since(&mut self, cur: &Histogram, prev: Option<&Histogram>) {
        let Some(p) = prev else {
            return self.merge(cur);
        };
        let first = cur.first as usize;
        for (i, (a, c)) in self.cover(cur).iter_mut().zip(&cur.counts).enumerate() {
            *a += (c - p.bucket(first + i)).max(0.0);
        }
        self.sum += (cur.sum - p.sum).max(0.0);
        self.count += (cur.count - p.count).max(0.0);
    }

    /// What was added to `prev` to make `self` (`prev` an earlier state of the same counters), never
    /// below zero.
    pub fn since(&self, prev: Option<&Histogram>) -> Histogram {
        let mut d = Histogram::default();
        d.merge_since(self, prev);
        d
    }

    /// The q-quantile (0..=1) by linear interpolation inside the bucket, as PromQL's histogram_quantile does.
    pub fn quantile(&self, bounds: &[f64], q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count;
        let mut seen = 0.0;
        for (j, &c) in self.counts.iter().enumerate() {
            let i = j + self.first as usize;
            if c > 0.0 && seen + c >= rank {
                let Some(&hi) = bounds.get(i) else {
                    return bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
                return Some(lo + (hi - lo) * ((rank - seen) / c));
            }
            seen += c;
        }
        bounds.last().copied()
    }
}

/// One RED series, labelled with owned strings: what snapshots and the exposition read.
#[derive(Clone, Debug, PartialEq)]
pub struct RedRow {
    pub service: Arc<str>,
    pub span_name: Arc<str>,
    pub kind: SpanKind,
    pub status: StatusCode,
    /// Values of the configured dimensions, in config order (empty string: absent); shared by every row
    /// of the series' combination of values.
    pub dims: Arc<[Arc<str>]>,
    /// The series that collects what a service sends past its cardinality cap (or, with an empty
    /// `service`, what services past the global series budget send).
    pub overflow: bool,
    pub calls: u64,
    pub duration: Histogram,
}

/// The identity of a RED series, borrowed: service, span name, kind, status, dimension values, overflow.
pub type SeriesRef<'a> = (&'a str, &'a str, SpanKind, StatusCode, &'a [Arc<str>], bool);

impl RedRow {
    /// Identity of the series, borrowed (no reference counts touched): for sorting and merging rows.
    pub fn id(&self) -> SeriesRef<'_> {
        (
            &self.service,
            &self.span_name,
            self.kind,
            self.status,
            &self.dims,
            self.overflow,
        )
    }
}

struct Series {
    calls: u64,
    duration: Histogram,
}

/// RED of one pod of one service, over its entry spans (server and consumer): what singles out a bad pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRow {
    pub service: Arc<str>,
    pub pod: Arc<str>,
    pub calls: u64,
    pub errors: u64,
    pub duration: Histogram,
}

/// Whether a span is where a request enters a service (its RED is the service's RED).
pub fn is_entry(kind: SpanKind) -> bool {
    matches!(kind, SpanKind::Server | SpanKind::Consumer)
}

/// A shard's RED aggregates.
pub struct RedTable {
    bounds: Arc<[f64]>,
    unit_ns: f64,
    dims: Vec<u16>,
    max_per_service: usize,
    /// Each series' place in `series`, found by its key there (the key is not kept twice), hashed as its
    /// [`Probe`].
    index: HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    series: Vec<(Key, Series)>,
    per_service: HashMap<u32, usize, foldhash::fast::FixedState>,
    /// Joined dimension values, interned ("\u{1f}" between values).
    dim_values: Interner,
    /// The values of each interned join (by its id), as rows carry them: split once, shared by rows.
    dim_rows: Vec<Arc<[Arc<str>]>>,
    scratch: String,
    /// Per (service, pod) entry-span RED; pods are bounded by what a cluster runs.
    pods: HashMap<(u32, u32), (u64, u64, Histogram), foldhash::fast::FixedState>,
    max_pods: usize,
    budget: Arc<SeriesBudget>,
}

impl RedTable {
    /// `dim_keys` are the attribute indexes of the configured dimensions (see [`crate::records::AttrKeys`]).
    pub fn new(cfg: &RedConfig, dim_keys: Vec<u16>, budget: Arc<SeriesBudget>) -> RedTable {
        let mut dim_values = Interner::default();
        // Id 0: no dimension values (what `dims_id` answers when none are configured, and the overflow
        // series' values): no values without dimensions, else the join of "" (one empty value).
        dim_values.id(b"");
        let none: Arc<[Arc<str>]> = if dim_keys.is_empty() {
            Arc::default()
        } else {
            Arc::from([Arc::from("")])
        };
        RedTable {
            bounds: cfg.bounds().into(),
            unit_ns: cfg.unit.nanos(),
            dims: dim_keys,
            max_per_service: cfg.max_series_per_service,
            index: HashTable::new(),
            hasher: foldhash::fast::FixedState::default(),
            series: Vec::new(),
            per_service: HashMap::default(),
            dim_values,
            dim_rows: vec![none],
            scratch: String::new(),
            pods: HashMap::default(),
            max_pods: cfg.max_pods,
            budget,
        }
    }

    /// Counts one span. `service` and `pod` are the interned `service.name` and `k8s.pod.name` of its
    /// resource (`service` is `None` past the global series budget, `pod` when the resource names none).
    #[inline]
    pub fn record(
        &mut self,
        names: &mut Interner,
        batch: &SpanBatch,
        span: &Span,
        service: Option<u32>,
        pod: Option<u32>,
    ) {
        let idx = match service {
            Some(service) => {
                if let Some(pod) = pod
                    && is_entry(span.kind)
                {
                    self.record_pod(service, pod, span);
                }
                self.series_of(names, batch, span, service)
            }
            None => self.overflow_series(names, None),
        };
        let (key, s) = &mut self.series[idx as usize];
        if key.overflow {
            self.budget.overflowed(1);
        }
        s.calls += 1;
        s.duration
            .observe(&self.bounds, span.duration_ns() as f64 / self.unit_ns);
    }

    /// The index of the span's series: its own, once seen; a new one; or its service's overflow series.
    #[inline]
    fn series_of(&mut self, names: &mut Interner, batch: &SpanBatch, span: &Span, service: u32) -> u32 {
        let name_bytes = batch.bytes(span.name);
        let found = self.dims_id(batch, span).and_then(|dims| {
            let probe = Probe {
                service,
                name: name_bytes,
                kind: span.kind,
                status: span.status,
                dims,
                overflow: false,
            };
            self.find(names, &probe)
        });
        found.unwrap_or_else(|| self.insert(names, name_bytes, service, span))
    }

    fn record_pod(&mut self, service: u32, pod: u32, span: &Span) {
        let full = self.pods.len() >= self.max_pods;
        let entry = match self.pods.get_mut(&(service, pod)) {
            Some(e) => e,
            // Past the cap or the budget new pods are not tracked (the service-level RED still counts them).
            None if full || !self.budget.take() => return,
            None => self
                .pods
                .entry((service, pod))
                .or_insert_with(|| (0, 0, Histogram::default())),
        };
        entry.0 += 1;
        if span.status == StatusCode::Error {
            entry.1 += 1;
        }
        entry
            .2
            .observe(&self.bounds, span.duration_ns() as f64 / self.unit_ns);
    }

    /// Per-pod rows, one at a time.
    pub fn pod_rows<'a>(&'a self, names: &'a Interner) -> impl ExactSizeIterator<Item = PodRow> + 'a {
        self.pods
            .iter()
            .map(|(&(service, pod), (calls, errors, h))| PodRow {
                service: names.resolve(service).clone(),
                pod: names.resolve(pod).clone(),
                calls: *calls,
                errors: *errors,
                duration: h.clone(),
            })
    }

    /// Per-pod rows.
    pub fn export_pods(&self, names: &Interner) -> Vec<PodRow> {
        self.pod_rows(names).collect()
    }

    /// A new series (its dimension values are in `scratch`), or the service's overflow series once the
    /// service is at its cap or the global budget is spent.
    #[cold]
    fn insert(&mut self, names: &mut Interner, name: &[u8], service: u32, span: &Span) -> u32 {
        let count = self.per_service.get(&service).copied().unwrap_or(0);
        if count >= self.max_per_service || !self.budget.take() {
            return self.overflow_series(names, Some(service));
        }
        let key = Key {
            service,
            name: names.id(name),
            kind: span.kind,
            status: span.status,
            dims: self.dims_of(),
            overflow: false,
        };
        if let Some(i) = self.find(names, &key.probe(names)) {
            return i;
        }
        *self.per_service.entry(service).or_default() += 1;
        self.push(names, key)
    }

    /// The overflow series of `service`, or with `None` the one of every service past the global budget
    /// (its service name is empty). At most one per admitted service plus one: not taken from the budget.
    fn overflow_series(&mut self, names: &mut Interner, service: Option<u32>) -> u32 {
        let empty = names.id(b"");
        let key = Key {
            service: service.unwrap_or(empty),
            name: empty,
            kind: SpanKind::Unspecified,
            status: StatusCode::Unset,
            dims: 0,
            overflow: true,
        };
        match self.find(names, &key.probe(names)) {
            Some(i) => i,
            None => self.push(names, key),
        }
    }

    /// The index of the series `p` names, if it is kept.
    #[inline]
    fn find(&self, names: &Interner, p: &Probe<'_>) -> Option<u32> {
        let h = self.hasher.hash_one(p);
        self.index
            .find(h, |&i| self.series[i as usize].0.probe(names) == *p)
            .copied()
    }

    fn push(&mut self, names: &Interner, key: Key) -> u32 {
        let i = self.series.len() as u32;
        // Grown by half at a time rather than doubled: every shard keeps a table, each series is 64 bytes.
        if self.series.len() == self.series.capacity() {
            self.series.reserve_exact((self.series.len() / 2).max(16));
        }
        self.series.push((
            key,
            Series {
                calls: 0,
                duration: Histogram::default(),
            },
        ));
        let (series, hasher) = (&self.series, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(key.probe(names)), i, |&j| {
                hasher.hash_one(series[j as usize].0.probe(names))
            });
        i
    }

    /// The interned id of the joined dimension values in `scratch`, interning them (and their values as
    /// rows carry them) when new.
    fn dims_of(&mut self) -> u32 {
        let id = self.dim_values.id(self.scratch.as_bytes());
        if id as usize == self.dim_rows.len() {
            let joined = self.dim_values.resolve(id);
            self.dim_rows
                .push(joined.split('\u{1f}').map(Arc::from).collect());
        }
        id
    }

    /// The interned id of the span's joined dimension values, if they were seen before (`Some(0)` without
    /// dimensions). The joined values stay in `scratch` for [`Self::insert`]: only a series admitted under
    /// the budget interns them.
    fn dims_id(&mut self, batch: &SpanBatch, span: &Span) -> Option<u32> {
        if self.dims.is_empty() {
            self.scratch.clear();
            return Some(0);
        }
        self.scratch.clear();
        for (n, &k) in self.dims.iter().enumerate() {
            if n > 0 {
                self.scratch.push('\u{1f}');
            }
            // Span attributes first, then the resource, as the spanmetrics connector looks them up.
            if let Some(v) = batch.attr(span, k).or_else(|| batch.resource_attr(span, k)) {
                self.scratch.push_str(batch.str(v));
            }
        }
        self.dim_values.get(self.scratch.as_bytes())
    }

    pub fn bounds(&self) -> &Arc<[f64]> {
        &self.bounds
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Every series as an owned row.
    pub fn export(&self, names: &Interner) -> Vec<RedRow> {
        self.rows(names).collect()
    }

    /// Every series as an owned row, one at a time.
    pub fn rows<'a>(&'a self, names: &'a Interner) -> impl ExactSizeIterator<Item = RedRow> + 'a {
        self.series.iter().map(|(k, s)| RedRow {
            service: names.resolve(k.service).clone(),
            span_name: names.resolve(k.name).clone(),
            kind: k.kind,
            status: k.status,
            dims: self.dim_rows[k.dims as usize].clone(),
            overflow: k.overflow,
            calls: s.calls,
            duration: s.duration.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Attr, AttrKeys, Resource, Text};
    use std::time::Duration;

    fn batch(spans: &[(&str, u64, StatusCode, Option<&str>)]) -> SpanBatch {
        let mut b = SpanBatch::default();
        let svc = b.push_text("checkout");
        b.resources.push(Resource {
            service: svc,
            ..Resource::default()
        });
        for (name, ms, status, dim) in spans {
            let name = b.push_text(name);
            let attr_start = b.attrs.len() as u32;
            if let Some(d) = dim {
                let value = b.push_text(d);
                b.attrs.push(Attr { key: 0, value });
            }
            let attr_len = (b.attrs.len() as u32 - attr_start) as u16;
            b.spans.push(Span {
                name,
                kind: SpanKind::Server,
                status: *status,
                start_ns: 1_000,
                end_ns: 1_000 + ms * 1_000_000,
                attr_start,
                attr_len,
                ..Span::default()
            });
        }
        let _ = Text::EMPTY;
        b
    }

    fn run(cfg: &RedConfig, b: &SpanBatch, dims: Vec<u16>) -> Vec<RedRow> {
        let mut names = Interner::default();
        let mut t = RedTable::new(cfg, dims, Arc::new(SeriesBudget::new(1000)));
        let svc = names.id(b.bytes(b.resources[0].service));
        for s in &b.spans {
            t.record(&mut names, b, s, Some(svc), None);
        }
        let mut rows = t.export(&names);
        rows.sort_by(|a, b| a.id().cmp(&b.id()));
        rows
    }

    #[test]
    fn counts_calls_and_buckets_per_status() {
        let cfg = RedConfig {
            buckets: vec![Duration::from_millis(10), Duration::from_millis(100)],
            unit: crate::config::LatencyUnit::Milliseconds,
            ..RedConfig::default()
        };
        let b = batch(&[
            ("GET /", 5, StatusCode::Unset, None),
            ("GET /", 10, StatusCode::Unset, None),
            ("GET /", 50, StatusCode::Unset, None),
            ("GET /", 500, StatusCode::Error, None),
        ]);
        let rows = run(&cfg, &b, vec![]);
        assert_eq!(rows.len(), 2);
        let ok = &rows[0];
        assert_eq!((ok.calls, ok.status), (3, StatusCode::Unset));
        // 5 ms and 10 ms in le=10, 50 ms in le=100, nothing past it.
        assert_eq!(ok.duration.counts(3), vec![2.0, 1.0, 0.0]);
        assert_eq!(ok.duration.sum, 65.0);
        assert_eq!(rows[1].duration.counts(3), vec![0.0, 0.0, 1.0]);
    }

    #[test]
    fn cardinality_cap_routes_to_overflow() {
        let cfg = RedConfig {
            max_series_per_service: 2,
            ..RedConfig::default()
        };
        let b = batch(&[
            ("a", 1, StatusCode::Unset, None),
            ("b", 1, StatusCode::Unset, None),
            ("c", 1, StatusCode::Unset, None),
            ("d", 1, StatusCode::Unset, None),
            ("a", 1, StatusCode::Unset, None),
        ]);
        let rows = run(&cfg, &b, vec![]);
        let overflow: Vec<_> = rows.iter().filter(|r| r.overflow).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].calls, 2);
        assert_eq!(rows.iter().map(|r| r.calls).sum::<u64>(), 5);
    }

    #[test]
    fn past_the_global_budget_new_series_and_services_overflow() {
        let budget = Arc::new(SeriesBudget::new(2));
        let mut names = Interner::default();
        let mut t = RedTable::new(&RedConfig::default(), vec![], budget.clone());
        let b = batch(&[
            ("a", 1, StatusCode::Unset, None),
            ("b", 1, StatusCode::Unset, None),
            ("c", 1, StatusCode::Unset, None),
            ("a", 1, StatusCode::Unset, None),
        ]);
        let svc = names.id(b"checkout");
        for s in &b.spans {
            t.record(&mut names, &b, s, Some(svc), None);
        }
        // A service past the budget: its spans land in the global overflow series.
        t.record(&mut names, &b, &b.spans[0], None, None);
        let mut rows = t.export(&names);
        rows.sort_by(|a, b| a.id().cmp(&b.id()));
        let got: Vec<_> = rows
            .iter()
            .map(|r| (&*r.service, &*r.span_name, r.overflow, r.calls))
            .collect();
        assert_eq!(
            got,
            vec![
                ("", "", true, 1),
                ("checkout", "", true, 1),
                ("checkout", "a", false, 2),
                ("checkout", "b", false, 1),
            ]
        );
        assert_eq!(budget.used(), 2);
        assert_eq!(budget.overflow_items(), 2);
    }

    #[test]
    fn dimensions_split_series() {
        let keys = AttrKeys::new(["http.method"]);
        let cfg = RedConfig::default();
        let b = batch(&[
            ("op", 1, StatusCode::Unset, Some("GET")),
            ("op", 1, StatusCode::Unset, Some("POST")),
            ("op", 1, StatusCode::Unset, Some("GET")),
            ("op", 1, StatusCode::Unset, None),
        ]);
        let rows = run(&cfg, &b, vec![keys.get("http.method").unwrap()]);
        let got: Vec<_> = rows.iter().map(|r| (r.dims[0].to_string(), r.calls)).collect();
        assert_eq!(got, vec![("".into(), 1), ("GET".into(), 2), ("POST".into(), 1)]);
    }

    #[test]
    fn rows_share_their_dimension_values() {
        let keys = AttrKeys::new(["http.method"]);
        let mut names = Interner::default();
        let budget = Arc::new(SeriesBudget::new(1000));
        let dims = vec![keys.get("http.method").unwrap()];
        let mut t = RedTable::new(&RedConfig::default(), dims, budget);
        let b = batch(&[
            ("a", 1, StatusCode::Unset, Some("GET")),
            ("b", 1, StatusCode::Unset, Some("GET")),
            ("c", 1, StatusCode::Unset, None),
        ]);
        let svc = names.id(b"checkout");
        for s in &b.spans {
            t.record(&mut names, &b, s, Some(svc), None);
        }
        let (first, second) = (t.export(&names), t.export(&names));
        // One allocation for "GET" across series and snapshots; absent is one empty value.
        assert!(Arc::ptr_eq(&first[0].dims, &first[1].dims));
        assert!(Arc::ptr_eq(&first[0].dims, &second[0].dims));
        assert_eq!(first[2].dims, Arc::from([Arc::from("")]));
        let none = RedTable::new(&RedConfig::default(), vec![], Arc::new(SeriesBudget::new(9)));
        assert!(none.dim_rows[0].is_empty(), "no dimensions, no values");
    }

    #[test]
    fn a_histogram_stores_only_its_non_empty_range() {
        let bounds = [1.0, 2.0, 4.0, 8.0];
        let mut h = Histogram::default();
        h.observe(&bounds, 3.0);
        assert_eq!((h.first, h.counts.len(), h.slots()), (2, 1, 3));
        h.observe(&bounds, 1.5);
        h.observe(&bounds, 100.0);
        assert_eq!((h.first, h.counts.len()), (1, 4));
        assert_eq!(h.counts(5), vec![0.0, 1.0, 1.0, 0.0, 1.0]);
        // A histogram of a shorter range merges in, and equality is per bucket, not per stored range.
        let mut low = Histogram::default();
        low.observe(&bounds, 0.5);
        let mut sum = low.clone();
        sum.merge(&h);
        assert_eq!(
            sum,
            Histogram::from_counts(&[1.0, 1.0, 1.0, 0.0, 1.0], 105.0, 4.0)
        );
        assert_eq!(sum.since(Some(&low)), h);
        // A delta summed into a total is the delta made and merged; an unchanged series adds nothing.
        let mut total = low.clone();
        total.merge_since(&sum, Some(&low));
        total.merge_since(&sum, Some(&sum));
        let mut want = low.clone();
        want.merge(&h);
        assert_eq!(total, want);
        sum.add(&low, -1.0);
        assert_eq!(
            sum,
            Histogram::from_counts(&[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], 104.5, 3.0)
        );
        assert_eq!(Histogram::from_counts(&[0.0; 3], 0.0, 0.0), Histogram::default());
    }

    #[test]
    fn quantile_interpolates_like_promql() {
        let bounds = [1.0, 2.0, 4.0];
        let mut h = Histogram::default();
        for v in [0.5, 1.5, 1.5, 3.0] {
            h.observe(&bounds, v);
        }
        // rank 2 of 4 falls in (1,2] holding 2 observations after 1: 1 + 1 * (1/2).
        assert_eq!(h.quantile(&bounds, 0.5), Some(1.5));
        assert_eq!(Histogram::default().quantile(&bounds, 0.5), None);
    }
}
