//! The service graph: client and server halves of each call paired into edges, with the semantics of
//! Grafana Tempo's service-graph processor (which the OpenTelemetry servicegraph connector follows closely).
//!
//! A client or producer span waits under (trace id, its span id); a server or consumer span under (trace
//! id, its parent span id). When the second half arrives the edge is complete and counted. A database
//! client span completes on its own (the database is not instrumented), and so does a root server span:
//! no client half can ever pair with it, so it is a call from the virtual node `user` (or from its
//! `peer.service`) at once, where Tempo makes it one when it expires. Halves still waiting after `wait`
//! expire: a client span with a peer attribute becomes a call to that virtual node, anything else is
//! counted as expired. When both halves of a pair write the same field, the one applied last wins, except `failed`,
//! which either can set. One [`GraphStore`] per shard; trace-id sharding puts both halves in one shard.

use std::sync::Arc;

use hashbrown::HashMap;
use tokio::time::Instant;

use crate::budget::SeriesBudget;
use crate::config::GraphConfig;
use crate::intern::Interner;
use crate::records::{Attr, AttrKeys, Span, SpanBatch, SpanKind, StatusCode, Text};
use crate::red::Histogram;

/// `connection_type` of an edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionType {
    /// A plain request between two instrumented services (the label is absent).
    #[default]
    Direct,
    MessagingSystem,
    Database,
    VirtualNode,
}

impl ConnectionType {
    pub fn as_label(self) -> &'static str {
        match self {
            ConnectionType::Direct => "",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::Database => "database",
            ConnectionType::VirtualNode => "virtual_node",
        }
    }
}

/// One edge's counters, labelled with owned strings.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeRow {
    pub client: Arc<str>,
    pub server: Arc<str>,
    pub connection_type: ConnectionType,
    /// Values of the dimension labels ([`GraphStore::dimension_labels`]), "" when absent.
    pub dims: Vec<Arc<str>>,
    pub total: f64,
    pub failed: f64,
    /// Seconds, as Tempo and the connector expose them.
    pub client_latency: Histogram,
    pub server_latency: Histogram,
    /// Consumer start minus producer end, for messaging edges.
    pub messaging_latency: Histogram,
}

impl EdgeRow {
    /// Identity of the edge, borrowed: the order of edge rows.
    pub fn id(&self) -> (&str, &str, ConnectionType, &[Arc<str>]) {
        (&self.client, &self.server, self.connection_type, &self.dims)
    }

    /// Adds `sign` times `o`'s counts (`sign` -1: takes an earlier state away).
    pub fn combine(&mut self, o: &EdgeRow, sign: f64) {
        self.total += sign * o.total;
        self.failed += sign * o.failed;
        self.client_latency.add(&o.client_latency, sign);
        self.server_latency.add(&o.server_latency, sign);
        self.messaging_latency.add(&o.messaging_latency, sign);
    }
}

/// The store's own counts (the `tempo_metrics_generator_processor_service_graphs_*` counters).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GraphCounters {
    /// Half edges created (including database edges complete at once).
    pub edges: u64,
    /// Halves that expired without becoming a virtual-node edge, by the kind of the span last applied.
    pub expired_server: u64,
    pub expired_client: u64,
    pub expired_producer: u64,
    pub expired_consumer: u64,
    /// Spans refused because `max_items` halves were already waiting.
    pub dropped_spans: u64,
    /// Halves waiting right now.
    pub pending: u64,
}

impl GraphCounters {
    /// Adds `o`'s counts and its waiting halves.
    pub fn add(&mut self, o: &GraphCounters) {
        *self = GraphCounters {
            pending: self.pending + o.pending,
            ..self.combine(o, |a, b| a + b)
        };
    }

    /// Each count of `self` and `o` combined by `op`; `pending`, a level, is `self`'s.
    pub fn combine(&self, o: &GraphCounters, op: impl Fn(u64, u64) -> u64) -> GraphCounters {
        GraphCounters {
            edges: op(self.edges, o.edges),
            expired_server: op(self.expired_server, o.expired_server),
            expired_client: op(self.expired_client, o.expired_client),
            expired_producer: op(self.expired_producer, o.expired_producer),
            expired_consumer: op(self.expired_consumer, o.expired_consumer),
            dropped_spans: op(self.dropped_spans, o.dropped_spans),
            pending: self.pending,
        }
    }
}

/// Who may write a dimension slot.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Writer {
    Any,
    Client,
    Server,
    /// `virtual_node` with prefixes on: set only when a half becomes a virtual-node edge.
    Expiry,
}

#[derive(Clone, Debug)]
struct Slot {
    key: Option<u16>,
    writer: Writer,
}

/// Attribute indexes the store reads, resolved once from the config.
#[derive(Clone, Debug, Default)]
pub struct GraphKeys {
    peer: Vec<u16>,
    db_names: Vec<u16>,
    peer_service: u16,
    server_address: u16,
    network_peer_address: u16,
    network_peer_port: u16,
    multiplier: Option<u16>,
    slots: Vec<Slot>,
    virtual_slot: Option<usize>,
    /// Per attribute index, what the store reads it for ([`PEER`], [`DB_NAME`]): a span without such
    /// attributes (most servers, most clients) skips the lookups of the peer and database keys.
    roles: Vec<u8>,
}

/// An attribute of [`GraphKeys::peer`].
const PEER: u8 = 1;
/// An attribute of [`GraphKeys::db_names`].
const DB_NAME: u8 = 2;

impl GraphKeys {
    /// The roles of `attrs`' keys, together.
    fn roles_of(&self, attrs: &[Attr]) -> u8 {
        attrs.iter().fold(0, |r, a| {
            r | self.roles.get(usize::from(a.key)).copied().unwrap_or(0)
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct PendingKey {
    trace: [u8; 16],
    id: [u8; 8],
}

impl std::hash::Hash for PendingKey {
    /// The ids as two integers: two writes to the hasher instead of four (lengths and bytes), for every
    /// span's lookup.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128(u128::from_le_bytes(self.trace));
        h.write_u64(u64::from_le_bytes(self.id));
    }
}

struct Edge {
    client: Option<u32>,
    server: Option<u32>,
    conn: ConnectionType,
    client_latency: f64,
    server_latency: f64,
    client_end_ns: u64,
    server_start_ns: u64,
    kind: SpanKind,
    failed: bool,
    peer: Option<u32>,
    multiplier: f64,
    root: bool,
    dims: Box<[Option<u32>]>,
    /// When a half still waiting for its other half expires.
    deadline: Instant,
}

impl Edge {
    fn complete(&self) -> bool {
        self.client.is_some() && self.server.is_some()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct EdgeKey {
    client: u32,
    server: u32,
    conn: ConnectionType,
    dims: Box<[Option<u32>]>,
}

struct EdgeStats {
    total: f64,
    failed: f64,
    client: Histogram,
    server: Histogram,
    messaging: Histogram,
}

/// A name a waiting half refers to, resolved: what [`GraphStore::pending`] hands out for a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HalfName {
    Known(Arc<str>),
    /// A name that was past the series budget when it was seen: its edge will not be kept.
    OverBudget,
}

/// A half edge still waiting for its other half, names resolved and its deadline on the caller's clock
/// (time since `origin`, see [`GraphStore::pending`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingHalf {
    pub trace: [u8; 16],
    /// The client span's id (its server half names it as its parent).
    pub id: [u8; 8],
    pub deadline: std::time::Duration,
    pub client: Option<HalfName>,
    pub server: Option<HalfName>,
    pub connection_type: ConnectionType,
    pub client_latency: f64,
    pub server_latency: f64,
    pub client_end_ns: u64,
    pub server_start_ns: u64,
    pub kind: SpanKind,
    pub failed: bool,
    pub peer: Option<HalfName>,
    pub multiplier: f64,
    pub root: bool,
    pub dims: Vec<Option<HalfName>>,
}

/// A shard's service-graph state: waiting halves and completed-edge counters.
pub struct GraphStore {
    keys: GraphKeys,
    bounds: Arc<[f64]>,
    wait: std::time::Duration,
    max_items: usize,
    messaging_histogram: bool,
    /// Halves waiting for their other half, each with its deadline: an expiry sweep scans them (a few
    /// times per wait period), so completing a pair costs nothing beyond its own entry.
    pending: HashMap<PendingKey, Edge, foldhash::fast::FixedState>,
    edges: HashMap<EdgeKey, EdgeStats, foldhash::fast::FixedState>,
    counters: GraphCounters,
    budget: Arc<SeriesBudget>,
}

/// The id of a name past the global series budget: never interned, never resolved (edges holding it are
/// dropped at [`GraphStore::emit`]).
const OVER_BUDGET: u32 = u32::MAX;

/// The interned id of a name a half edge refers to (peer, database, dimension value); a name not seen
/// before takes a unit of the budget, or is [`OVER_BUDGET`].
fn budgeted(names: &mut Interner, budget: &SeriesBudget, bytes: &[u8]) -> u32 {
    match names.get(bytes) {
        Some(id) => id,
        None if budget.take() => names.id(bytes),
        None => OVER_BUDGET,
    }
}

/// Prometheus label names: characters outside `[a-zA-Z0-9_]` become `_`.
pub fn sanitize_label(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl GraphStore {
    /// Registers the attributes the store reads in `keys` (so the collector keeps them).
    pub fn attr_keys(cfg: &GraphConfig, keys: &mut AttrKeys) -> GraphKeys {
        let mut slots = Vec::new();
        let mut virtual_slot = None;
        let mut dims: Vec<&str> = cfg.dimensions.iter().map(String::as_str).collect();
        if cfg.enable_virtual_node_label {
            dims.push("virtual_node");
        }
        for d in dims {
            let is_virtual = cfg.enable_virtual_node_label && d == "virtual_node";
            if cfg.enable_client_server_prefix {
                if is_virtual {
                    virtual_slot = Some(slots.len());
                    slots.push(Slot {
                        key: None,
                        writer: Writer::Expiry,
                    });
                } else {
                    slots.push(Slot {
                        key: Some(keys.intern(d)),
                        writer: Writer::Client,
                    });
                    slots.push(Slot {
                        key: Some(keys.intern(d)),
                        writer: Writer::Server,
                    });
                }
            } else {
                if is_virtual {
                    virtual_slot = Some(slots.len());
                }
                slots.push(Slot {
                    key: Some(keys.intern(d)),
                    writer: Writer::Any,
                });
            }
        }
        let peer: Vec<u16> = cfg.peer_attributes.iter().map(|a| keys.intern(a)).collect();
        let db_names: Vec<u16> = cfg
            .database_name_attributes
            .iter()
            .map(|a| keys.intern(a))
            .collect();
        let mut roles = vec![0; keys.len()];
        for &k in &peer {
            roles[usize::from(k)] |= PEER;
        }
        for &k in &db_names {
            roles[usize::from(k)] |= DB_NAME;
        }
        GraphKeys {
            peer,
            db_names,
            roles,
            peer_service: keys.intern("peer.service"),
            server_address: keys.intern("server.address"),
            network_peer_address: keys.intern("network.peer.address"),
            network_peer_port: keys.intern("network.peer.port"),
            multiplier: (!cfg.span_multiplier_key.is_empty()).then(|| keys.intern(&cfg.span_multiplier_key)),
            slots,
            virtual_slot,
        }
    }

    /// The dimension label names, in the order of [`EdgeRow::dims`].
    pub fn dimension_labels(cfg: &GraphConfig) -> Vec<String> {
        let mut out = Vec::new();
        let mut dims: Vec<&str> = cfg.dimensions.iter().map(String::as_str).collect();
        if cfg.enable_virtual_node_label {
            dims.push("virtual_node");
        }
        for d in dims {
            if cfg.enable_client_server_prefix && !(cfg.enable_virtual_node_label && d == "virtual_node") {
                out.push(sanitize_label(&format!("client_{d}")));
                out.push(sanitize_label(&format!("server_{d}")));
            } else {
                out.push(sanitize_label(d));
            }
        }
        out
    }

    /// `shards` splits `max_items` evenly, so the whole engine holds at most about `max_items` halves.
    pub fn new(cfg: &GraphConfig, keys: GraphKeys, shards: usize, budget: Arc<SeriesBudget>) -> GraphStore {
        GraphStore {
            keys,
            bounds: cfg.bounds().into(),
            wait: cfg.wait,
            max_items: cfg.max_items.div_ceil(shards.max(1)),
            messaging_histogram: cfg.enable_messaging_system_latency_histogram,
            pending: HashMap::default(),
            edges: HashMap::default(),
            counters: GraphCounters::default(),
            budget,
        }
    }

    /// Resource attributes first, then the span's, as Tempo looks dimensions and database names up.
    fn find(batch: &SpanBatch, span: &Span, key: u16) -> Option<Text> {
        batch.resource_attr(span, key).or_else(|| batch.attr(span, key))
    }

    /// Applies one span. `service` is its resource's interned `service.name`; `None` (a service past the
    /// global series budget) leaves the span out of the graph.
    pub fn record(
        &mut self,
        names: &mut Interner,
        batch: &SpanBatch,
        span: &Span,
        service: Option<u32>,
        now: Instant,
    ) {
        let Some(service) = service else { return };
        let is_client = match span.kind {
            SpanKind::Client | SpanKind::Producer => true,
            SpanKind::Server | SpanKind::Consumer => false,
            _ => return,
        };
        // A resource without a service name has no place in the graph.
        if batch
            .resources
            .get(span.resource as usize)
            .is_none_or(|r| r.service.is_empty())
        {
            return;
        }
        let key = PendingKey {
            trace: span.trace_id,
            id: if is_client {
                span.span_id
            } else {
                span.parent_span_id
            },
        };
        let root = !is_client && !span.has_parent();
        if !root && let Some(edge) = self.pending.get_mut(&key) {
            Self::apply(
                &self.keys,
                &self.budget,
                names,
                edge,
                batch,
                span,
                service,
                is_client,
            );
            if edge.complete() {
                let edge = self.pending.remove(&key).expect("present");
                self.emit(&edge);
            }
            return;
        }
        let mut edge = Edge {
            client: None,
            server: None,
            conn: ConnectionType::Direct,
            client_latency: 0.0,
            server_latency: 0.0,
            client_end_ns: 0,
            server_start_ns: 0,
            kind: span.kind,
            failed: false,
            peer: None,
            multiplier: 1.0,
            root,
            dims: vec![None; self.keys.slots.len()].into(),
            deadline: now + self.wait,
        };
        Self::apply(
            &self.keys,
            &self.budget,
            names,
            &mut edge,
            batch,
            span,
            service,
            is_client,
        );
        self.counters.edges += 1;
        if edge.complete() {
            self.emit(&edge);
            return;
        }
        if root {
            // No client half waits under an empty span id: waiting would only hold the table's room.
            self.emit_from_user(names, edge);
            return;
        }
        if self.pending.len() >= self.max_items {
            self.counters.dropped_spans += 1;
            return;
        }
        self.pending.insert(key, edge);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        keys: &GraphKeys,
        budget: &SeriesBudget,
        names: &mut Interner,
        e: &mut Edge,
        batch: &SpanBatch,
        span: &Span,
        service: u32,
        is_client: bool,
    ) {
        let messaging = matches!(span.kind, SpanKind::Producer | SpanKind::Consumer);
        let latency = span.duration_ns() as f64 / 1e9;
        e.kind = span.kind;
        e.conn = if messaging {
            ConnectionType::MessagingSystem
        } else {
            ConnectionType::Direct
        };
        e.failed |= span.status == StatusCode::Error;
        if is_client {
            e.client = Some(service);
            e.client_latency = latency;
            e.client_end_ns = span.end_ns;
        } else {
            e.server = Some(service);
            e.server_latency = latency;
            e.server_start_ns = span.start_ns;
        }
        for (slot, value) in keys.slots.iter().zip(e.dims.iter_mut()) {
            let writes = match slot.writer {
                Writer::Any => true,
                Writer::Client => is_client,
                Writer::Server => !is_client,
                Writer::Expiry => false,
            };
            if writes && let Some(v) = slot.key.and_then(|k| Self::find(batch, span, k)) {
                *value = Some(budgeted(names, budget, batch.bytes(v)));
            }
        }
        e.multiplier = keys
            .multiplier
            .and_then(|k| batch.attr(span, k).or_else(|| batch.resource_attr(span, k)))
            .and_then(|v| batch.str(v).parse::<f64>().ok())
            .filter(|&v| v > 0.0)
            .map_or(1.0, |v| 1.0 / v);
        // Peer attributes are read from the span itself only; the last half that has one wins.
        let roles = keys.roles_of(batch.span_attrs(span));
        if roles & PEER != 0
            && let Some(p) = keys.peer.iter().find_map(|&k| batch.attr(span, k))
        {
            e.peer = Some(budgeted(names, budget, batch.bytes(p)));
        }
        if is_client && (roles | keys.roles_of(batch.resource_attrs(span))) & DB_NAME != 0 {
            Self::database(keys, budget, names, e, batch, span, latency);
        }
    }

    /// A client span with a database attribute is a call to that database, complete at once. The server
    /// is named by `peer.service`, `server.address`, `network.peer.address[:port]` or the database name.
    fn database(
        keys: &GraphKeys,
        budget: &SeriesBudget,
        names: &mut Interner,
        e: &mut Edge,
        batch: &SpanBatch,
        span: &Span,
        latency: f64,
    ) {
        let Some(db_name) = keys.db_names.iter().find_map(|&k| Self::find(batch, span, k)) else {
            return;
        };
        e.conn = ConnectionType::Database;
        e.server_latency = latency;
        let find = |k| Self::find(batch, span, k);
        let server: Option<std::borrow::Cow<'_, str>> = if let Some(v) = find(keys.peer_service) {
            Some(batch.str(v).into())
        } else if let Some(v) = find(keys.server_address) {
            Some(batch.str(v).into())
        } else if let Some(v) = find(keys.network_peer_address) {
            match find(keys.network_peer_port) {
                Some(port) => Some(format!("{}:{}", batch.str(v), batch.str(port)).into()),
                None => Some(batch.str(v).into()),
            }
        } else {
            Some(batch.str(db_name).into())
        };
        // An attribute that is present but empty still wins its step and leaves the edge incomplete.
        e.server = server
            .filter(|s| !s.is_empty())
            .map(|s| budgeted(names, budget, s.as_bytes()));
    }

    fn emit(&mut self, e: &Edge) {
        let (Some(client), Some(server)) = (e.client, e.server) else {
            return;
        };
        let key = EdgeKey {
            client,
            server,
            conn: e.conn,
            dims: e.dims.clone(),
        };
        let stats = match self.edges.entry(key) {
            hashbrown::hash_map::Entry::Occupied(o) => o.into_mut(),
            hashbrown::hash_map::Entry::Vacant(v) => {
                // An edge naming a value past the budget, or a new edge once it is spent, is not kept.
                if v.key().dims.contains(&Some(OVER_BUDGET))
                    || [client, server].contains(&OVER_BUDGET)
                    || !self.budget.take()
                {
                    self.budget.overflowed(1);
                    return;
                }
                v.insert(EdgeStats {
                    total: 0.0,
                    failed: 0.0,
                    client: Histogram::default(),
                    server: Histogram::default(),
                    messaging: Histogram::default(),
                })
            }
        };
        let m = e.multiplier;
        stats.total += m;
        if e.failed {
            stats.failed += m;
        }
        stats.client.observe_weighted(&self.bounds, e.client_latency, m);
        stats.server.observe_weighted(&self.bounds, e.server_latency, m);
        if self.messaging_histogram && e.conn == ConnectionType::MessagingSystem {
            // Integer nanoseconds first, then seconds, so the value is exact; a zero gap is not recorded.
            let gap = e.server_start_ns.saturating_sub(e.client_end_ns);
            if gap > 0 {
                stats
                    .messaging
                    .observe_weighted(&self.bounds, gap as f64 / 1e9, m);
            }
        }
    }

    /// Expires halves whose deadline has passed: virtual-node edges where a peer is known, else counted.
    pub fn expire(&mut self, names: &mut Interner, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let mut expired: Vec<Edge> = self
            .pending
            .extract_if(|_, e| e.deadline <= now)
            .map(|(_, e)| e)
            .collect();
        // Oldest first, as they were seen (names of virtual nodes are interned in that order).
        expired.sort_by_key(|e| e.deadline);
        for mut e in expired {
            if e.root {
                // A root half restored from a checkpoint written before roots completed at once.
                self.emit_from_user(names, e);
                continue;
            }
            e.conn = ConnectionType::VirtualNode;
            if e.client.is_some()
                && e.server.is_none()
                && let Some(peer) = e.peer
            {
                e.server = Some(peer);
                self.set_virtual(names, &mut e, b"server");
                self.emit(&e);
                continue;
            }
            match e.kind {
                SpanKind::Server => self.counters.expired_server += 1,
                SpanKind::Client => self.counters.expired_client += 1,
                SpanKind::Producer => self.counters.expired_producer += 1,
                _ => self.counters.expired_consumer += 1,
            }
        }
    }

    /// A root server span's half as the call from the virtual node `user` (or from its peer).
    fn emit_from_user(&mut self, names: &mut Interner, mut e: Edge) {
        e.conn = ConnectionType::VirtualNode;
        e.client = Some(e.peer.unwrap_or_else(|| names.id(b"user")));
        self.set_virtual(names, &mut e, b"client");
        self.emit(&e);
    }

    fn set_virtual(&self, names: &mut Interner, e: &mut Edge, side: &[u8]) {
        if let Some(i) = self.keys.virtual_slot {
            e.dims[i] = Some(names.id(side));
        }
    }

    pub fn counters(&self) -> GraphCounters {
        GraphCounters {
            pending: self.pending.len() as u64,
            ..self.counters
        }
    }

    /// The halves still waiting, oldest first, their deadlines as time since `origin`.
    pub fn pending(&self, names: &Interner, origin: Instant) -> Vec<PendingHalf> {
        let name = |id: u32| {
            if id == OVER_BUDGET {
                HalfName::OverBudget
            } else {
                HalfName::Known(names.resolve(id).clone())
            }
        };
        let mut halves: Vec<(&PendingKey, &Edge)> = self.pending.iter().collect();
        halves.sort_by_key(|(_, e)| e.deadline);
        halves
            .into_iter()
            .map(|(key, e)| PendingHalf {
                trace: key.trace,
                id: key.id,
                deadline: e.deadline.saturating_duration_since(origin),
                client: e.client.map(name),
                server: e.server.map(name),
                connection_type: e.conn,
                client_latency: e.client_latency,
                server_latency: e.server_latency,
                client_end_ns: e.client_end_ns,
                server_start_ns: e.server_start_ns,
                kind: e.kind,
                failed: e.failed,
                peer: e.peer.map(name),
                multiplier: e.multiplier,
                root: e.root,
                dims: e.dims.iter().map(|d| d.map(name)).collect(),
            })
            .collect()
    }

    /// Takes back halves [`GraphStore::pending`] handed out (by another store, maybe in another process),
    /// in their order; names are interned as a span's are, taking the series budget.
    pub fn restore(&mut self, names: &mut Interner, origin: Instant, halves: Vec<PendingHalf>) {
        let budget = self.budget.clone();
        let mut id = |n: HalfName| match n {
            HalfName::Known(s) => budgeted(names, &budget, s.as_bytes()),
            HalfName::OverBudget => OVER_BUDGET,
        };
        let slots = self.keys.slots.len();
        for h in halves {
            let mut dims: Vec<Option<u32>> = h.dims.into_iter().map(|d| d.map(&mut id)).collect();
            // A checkpoint of another configuration: its dimensions do not line up, so none is kept.
            if dims.len() != slots {
                dims = vec![None; slots];
            }
            let edge = Edge {
                client: h.client.map(&mut id),
                server: h.server.map(&mut id),
                conn: h.connection_type,
                client_latency: h.client_latency,
                server_latency: h.server_latency,
                client_end_ns: h.client_end_ns,
                server_start_ns: h.server_start_ns,
                kind: h.kind,
                failed: h.failed,
                peer: h.peer.map(&mut id),
                multiplier: h.multiplier,
                root: h.root,
                dims: dims.into(),
                deadline: origin + h.deadline,
            };
            let key = PendingKey {
                trace: h.trace,
                id: h.id,
            };
            self.pending.insert(key, edge);
        }
    }

    pub fn export(&self, names: &Interner) -> Vec<EdgeRow> {
        self.rows(names).collect()
    }

    /// Every edge as an owned row, one at a time.
    pub fn rows<'a>(&'a self, names: &'a Interner) -> impl ExactSizeIterator<Item = EdgeRow> + 'a {
        self.edges.iter().map(|(k, s)| EdgeRow {
            client: names.resolve(k.client).clone(),
            server: names.resolve(k.server).clone(),
            connection_type: k.conn,
            dims: k
                .dims
                .iter()
                .map(|v| v.map_or_else(|| Arc::from(""), |id| names.resolve(id).clone()))
                .collect(),
            total: s.total,
            failed: s.failed,
            client_latency: s.client.clone(),
            server_latency: s.server.clone(),
            messaging_latency: s.messaging.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Attr, Resource};
    use std::time::Duration;

    /// Builds a batch: one resource per span, as the Tempo fixtures have it.
    struct B {
        batch: SpanBatch,
        keys: AttrKeys,
    }

    impl B {
        fn new(keys: AttrKeys) -> B {
            B {
                batch: SpanBatch::default(),
                keys,
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn span(
            &mut self,
            svc: &str,
            kind: SpanKind,
            id: u8,
            parent: u8,
            ms: u64,
            err: bool,
            attrs: &[(&str, &str)],
        ) {
            let b = &mut self.batch;
            let service = b.push_text(svc);
            b.resources.push(Resource {
                service,
                ..Resource::default()
            });
            let attr_start = b.attrs.len() as u32;
            for (k, v) in attrs {
                let key = self.keys.get(k).expect("key registered");
                let value = b.push_text(v);
                b.attrs.push(Attr { key, value });
            }
            let name = b.push_text("op");
            b.spans.push(Span {
                trace_id: [7; 16],
                span_id: [id; 8],
                parent_span_id: [parent; 8],
                name,
                kind,
                status: if err { StatusCode::Error } else { StatusCode::Unset },
                start_ns: 1_000_000_000,
                end_ns: 1_000_000_000 + ms * 1_000_000,
                resource: (b.resources.len() - 1) as u32,
                attr_start,
                attr_len: (b.attrs.len() as u32 - attr_start) as u16,
            });
        }
    }

    fn run(cfg: &GraphConfig, build: impl FnOnce(&mut B), expire: bool) -> (Vec<EdgeRow>, GraphCounters) {
        let mut keys = AttrKeys::default();
        let gk = GraphStore::attr_keys(cfg, &mut keys);
        let mut b = B::new(keys);
        build(&mut b);
        let mut names = Interner::default();
        let mut g = GraphStore::new(cfg, gk, 1, Arc::new(SeriesBudget::new(100_000)));
        let now = Instant::now();
        for s in &b.batch.spans {
            let svc = names.id(b.batch.bytes(b.batch.resources[s.resource as usize].service));
            g.record(&mut names, &b.batch, s, Some(svc), now);
        }
        if expire {
            g.expire(&mut names, now + cfg.wait);
        }
        let mut rows = g.export(&names);
        rows.sort_by(|a, b| a.id().cmp(&b.id()));
        (rows, g.counters())
    }

    #[test]
    fn pairs_client_and_server_across_order() {
        let cfg = GraphConfig::default();
        for server_first in [false, true] {
            let (rows, c) = run(
                &cfg,
                |b| {
                    let client = |b: &mut B| b.span("frontend", SpanKind::Client, 2, 1, 50, false, &[]);
                    let server = |b: &mut B| b.span("checkout", SpanKind::Server, 3, 2, 30, true, &[]);
                    if server_first {
                        server(b);
                        client(b);
                    } else {
                        client(b);
                        server(b);
                    }
                },
                false,
            );
            assert_eq!(rows.len(), 1);
            let e = &rows[0];
            assert_eq!(
                (&*e.client, &*e.server, e.connection_type),
                ("frontend", "checkout", ConnectionType::Direct)
            );
            assert_eq!((e.total, e.failed), (1.0, 1.0));
            assert!((e.client_latency.sum - 0.05).abs() < 1e-9 && (e.server_latency.sum - 0.03).abs() < 1e-9);
            assert_eq!((c.edges, c.pending), (1, 0));
        }
    }

    #[test]
    fn database_edge_completes_alone_and_is_named_by_precedence() {
        let cfg = GraphConfig::default();
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("db.system", "postgresql"), ("db.name", "orders")], "orders"),
            (&[("db.system", "postgresql"), ("server.address", "pg-1")], "pg-1"),
            (
                &[
                    ("db.system", "postgresql"),
                    ("network.peer.address", "10.0.0.5"),
                    ("network.peer.port", "5432"),
                ],
                "10.0.0.5:5432",
            ),
            (&[("db.name", "orders"), ("peer.service", "pg")], "pg"),
        ];
        for (attrs, want) in cases {
            let (rows, _) = run(
                &cfg,
                |b| b.span("inventory", SpanKind::Client, 2, 1, 10, false, attrs),
                false,
            );
            assert_eq!(rows.len(), 1, "{want}");
            assert_eq!(
                (&*rows[0].server, rows[0].connection_type),
                (want, ConnectionType::Database)
            );
            assert_eq!(rows[0].server_latency.count, 1.0);
        }
    }

    #[test]
    fn expiry_makes_virtual_nodes_or_counts() {
        let cfg = GraphConfig {
            wait: Duration::from_millis(1),
            enable_virtual_node_label: true,
            ..GraphConfig::default()
        };
        let (rows, c) = run(
            &cfg,
            |b| {
                // A root server span: called by `user`.
                b.span("frontend", SpanKind::Server, 1, 0, 5, false, &[]);
                // A client span to an uninstrumented peer.
                b.span(
                    "frontend",
                    SpanKind::Client,
                    2,
                    1,
                    5,
                    false,
                    &[("peer.service", "stripe")],
                );
                // A server span whose parent never arrives, and a client span with no peer: only counted.
                b.span("payment", SpanKind::Server, 4, 9, 5, false, &[]);
                b.span("payment", SpanKind::Client, 5, 4, 5, false, &[]);
            },
            true,
        );
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.client.to_string(), r.server.to_string(), r.dims[0].to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("frontend".into(), "stripe".into(), "server".into()),
                ("user".into(), "frontend".into(), "client".into())
            ]
        );
        assert!(
            rows.iter()
                .all(|r| r.connection_type == ConnectionType::VirtualNode)
        );
        assert_eq!((c.expired_server, c.expired_client, c.pending), (1, 1, 0));
    }

    #[test]
    fn a_half_waits_until_its_deadline_and_completed_pairs_leave_nothing() {
        let cfg = GraphConfig::default();
        let mut keys = AttrKeys::default();
        let gk = GraphStore::attr_keys(&cfg, &mut keys);
        let mut names = Interner::default();
        let mut g = GraphStore::new(&cfg, gk, 1, Arc::new(SeriesBudget::new(100_000)));
        let t0 = Instant::now();
        let record = |g: &mut GraphStore, names: &mut Interner, b: B, trace: u32, at: Instant| {
            let mut batch = b.batch;
            for s in &mut batch.spans {
                s.trace_id[..4].copy_from_slice(&trace.to_le_bytes());
            }
            for s in &batch.spans {
                let svc = names.id(batch.bytes(batch.resources[s.resource as usize].service));
                g.record(names, &batch, s, Some(svc), at);
            }
        };
        // Many pairs, each completed in its batch: nothing is left waiting.
        for i in 0..5_000u32 {
            let mut b = B::new(keys.clone());
            b.span("a", SpanKind::Client, 7, 0, 1, false, &[]);
            b.span("b", SpanKind::Server, 8, 7, 1, false, &[]);
            record(&mut g, &mut names, b, i, t0);
        }
        assert_eq!(g.counters().pending, 0);
        // Two client halves whose servers never come, seen one second apart.
        for (trace, at) in [(1_000_000, t0), (1_000_001, t0 + Duration::from_secs(1))] {
            let mut b = B::new(keys.clone());
            b.span("a", SpanKind::Client, 7, 0, 1, false, &[]);
            record(&mut g, &mut names, b, trace, at);
        }
        let before = t0 + cfg.wait - Duration::from_millis(1);
        g.expire(&mut names, before);
        assert_eq!((g.counters().pending, g.counters().expired_client), (2, 0));
        g.expire(&mut names, t0 + cfg.wait);
        assert_eq!((g.counters().pending, g.counters().expired_client), (1, 1));
        let left = g.pending(&names, t0);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].deadline, cfg.wait + Duration::from_secs(1));
        g.expire(&mut names, t0 + cfg.wait + Duration::from_secs(1));
        assert_eq!((g.counters().pending, g.counters().expired_client), (0, 2));
    }

    #[test]
    fn full_store_drops_new_halves_but_still_pairs() {
        let cfg = GraphConfig {
            max_items: 1,
            ..GraphConfig::default()
        };
        let (rows, c) = run(
            &cfg,
            |b| {
                b.span("a", SpanKind::Client, 2, 1, 1, false, &[]);
                b.span("a", SpanKind::Client, 3, 1, 1, false, &[]);
                b.span("b", SpanKind::Server, 4, 2, 1, false, &[]);
            },
            false,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!((c.dropped_spans, c.edges), (1, 2));
    }

    #[test]
    fn dimensions_last_writer_wins_or_prefixed() {
        let build = |b: &mut B| {
            b.span("req", SpanKind::Client, 2, 1, 1, false, &[("god", "ares")]);
            b.span("srv", SpanKind::Server, 3, 2, 1, false, &[("god", "zeus")]);
        };
        let plain = GraphConfig {
            dimensions: vec!["god".into()],
            ..GraphConfig::default()
        };
        let (rows, _) = run(&plain, build, false);
        assert_eq!(rows[0].dims, vec![Arc::from("zeus")]);
        let prefixed = GraphConfig {
            enable_client_server_prefix: true,
            ..plain
        };
        assert_eq!(
            GraphStore::dimension_labels(&prefixed),
            vec!["client_god", "server_god"]
        );
        let (rows, _) = run(&prefixed, build, false);
        assert_eq!(rows[0].dims, vec![Arc::from("ares"), Arc::from("zeus")]);
    }
}
