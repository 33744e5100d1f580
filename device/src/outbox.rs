//! Sans-IO publish state machine: which fixed batch is waiting, handed to the MQTT client, sent
//! under which packet id, or acknowledged.
//!
//! ```text
//!   add ──► Waiting ──hand──► Handed ──Outgoing::Publish(pkid)──► Sent(pkid) ──PubAck(pkid)──► acked
//!              ▲                 │                                   │
//!              └─────────────────┴──── connection lost, session not resumed ─┘
//! ```
//!
//! # Mapping PUBACKs to batches (rumqttc 0.25)
//! rumqttc assigns packet ids itself and reports them only as `Outgoing::Publish(pkid)` events,
//! in the order requests leave its queue. So every publish handed to the client (batches *and*
//! control acks / requests, which consume packet ids too) is appended to a FIFO, and each
//! `Outgoing::Publish(pkid)` pops the front — unless `pkid` is already mapped, which is a
//! retransmission after a resumed session (rumqttc re-sends unacked publishes with their old
//! packet id). A collision (`Outgoing::AwaitAck`) pops the front too and maps when the held
//! publish finally goes out.
//!
//! When the connection drops, rumqttc moves unacked publishes and not-yet-sent requests into its
//! `pending` queue. If the next CONNACK says the session was **not** present, rumqttc discards
//! that queue: every batch that was sent but unacked, plus the first `fresh_pending` handed ones
//! (the MQTT task counts pkid-0 publishes in `pending` at the disconnect), go back to Waiting and
//! are re-published with the same batch id and bytes. Requests handed after the disconnect were
//! still in the client channel and will go out normally, so they keep their FIFO position.
//! A PUBACK for an unknown packet id is ignored: misattributing one would ack (and delete) rows
//! the broker never took, so the conservative choice is to wait for a redelivery instead.

use std::collections::{BTreeMap, HashMap, VecDeque};

use uuid::Uuid;

/// Kind of a fixed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    Rows,
    /// At most one per table in flight: the cloud rejects a lower `batch_seq` as stale, so
    /// reordering two telemetry batches would lose the second.
    Telemetry,
}

impl BatchKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BatchKind::Rows => "rows",
            BatchKind::Telemetry => "telemetry",
        }
    }
    pub fn parse(s: &str) -> Option<BatchKind> {
        match s {
            "rows" => Some(BatchKind::Rows),
            "telemetry" => Some(BatchKind::Telemetry),
            _ => None,
        }
    }
}

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Handed,
    Sent(u16),
}

/// A fixed batch as the state machine sees it (the bytes live in `state.db` and the daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub batch_id: Uuid,
    /// Journal epoch of `first_seq..=last_seq`: a PUBACK moves the table's cursor only while
    /// this is still the current epoch (seqs restart in a new one).
    pub epoch: Uuid,
    pub kind: BatchKind,
    pub table: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub bytes: usize,
    pub phase: Phase,
    /// Times handed to the client (1 = first publish).
    pub attempts: u32,
}

impl Tracked {
    /// A batch just fixed (or loaded after a restart), not handed to the client yet.
    pub fn waiting(
        batch_id: Uuid,
        epoch: Uuid,
        kind: BatchKind,
        table: String,
        (first_seq, last_seq): (i64, i64),
        bytes: usize,
    ) -> Tracked {
        Tracked {
            batch_id,
            epoch,
            kind,
            table,
            first_seq,
            last_seq,
            bytes,
            phase: Phase::Waiting,
            attempts: 0,
        }
    }
}

/// What a publish handed to the client was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Batch(Uuid),
    /// A control ack or a `url_request`: consumes a packet id, nothing to do on PUBACK.
    Other,
    /// The `finalize` of a spill (see `spill`): its PUBACK completes the spill.
    Finalize(Uuid),
}

/// What a PUBACK acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acked {
    Batch(Tracked),
    Finalize(Uuid),
}

impl Acked {
    pub fn batch_id(&self) -> Uuid {
        match self {
            Acked::Batch(t) => t.batch_id,
            Acked::Finalize(id) => *id,
        }
    }
}

/// The state machine.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Creation order = publish order.
    order: VecDeque<Uuid>,
    batches: HashMap<Uuid, Tracked>,
    handed: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    collided: Option<(u16, Tag)>,
    /// Front of `handed` that sat in rumqttc's pending queue at the last disconnect.
    fresh_pending: usize,
    connected: bool,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Adds a batch fixed in `state.db` (at start-up in outbox order, later as built).
    pub fn add(&mut self, mut t: Tracked) {
        t.phase = Phase::Waiting;
        if self.batches.contains_key(&t.batch_id) {
            return;
        }
        self.order.push_back(t.batch_id);
        self.batches.insert(t.batch_id, t);
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Unacknowledged batches (any phase).
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Batches handed or sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.batches
            .values()
            .filter(|t| t.phase != Phase::Waiting)
            .count()
    }

    /// Batches not yet handed.
    pub fn waiting(&self) -> usize {
        self.batches.len() - self.inflight()
    }

    pub fn get(&self, id: &Uuid) -> Option<&Tracked> {
        self.batches.get(id)
    }

    /// Whether a telemetry batch of `table` is fixed and not yet acknowledged.
    pub fn has_telemetry_for(&self, table: &str) -> bool {
        self.batches
            .values()
            .any(|t| t.kind == BatchKind::Telemetry && t.table == table)
    }

    /// Unacked batches per table (for `status`).
    pub fn per_table(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.batches.values() {
            *m.entry(t.table.clone()).or_insert(0) += 1;
        }
        m
    }

    /// The next batch to publish, if the connection is up and `max_inflight` allows; skips
    /// tables `blocked` says are paused, and telemetry batches whose table already has one in
    /// flight.
    pub fn next_to_send(
        &self,
        max_inflight: usize,
        blocked: &dyn Fn(&str) -> bool,
    ) -> Option<Uuid> {
        if !self.connected || self.inflight() >= max_inflight {
            return None;
        }
        let mut telemetry_busy: Vec<&str> = self
            .batches
            .values()
            .filter(|t| t.kind == BatchKind::Telemetry && t.phase != Phase::Waiting)
            .map(|t| t.table.as_str())
            .collect();
        for id in &self.order {
            let Some(t) = self.batches.get(id) else {
                continue;
            };
            if t.phase != Phase::Waiting {
                continue;
            }
            if t.kind == BatchKind::Telemetry {
                // Keep batch_seq order: an earlier waiting one of the same table goes first.
                if telemetry_busy.contains(&t.table.as_str()) {
                    continue;
                }
                telemetry_busy.push(t.table.as_str());
            }
            if blocked(&t.table) {
                continue;
            }
            return Some(*id);
        }
        None
    }

    /// The client accepted the publish of batch `id`.
    pub fn handed(&mut self, id: Uuid) {
        if let Some(t) = self.batches.get_mut(&id) {
            t.phase = Phase::Handed;
            t.attempts += 1;
            self.handed.push_back(Tag::Batch(id));
        }
    }

    /// The client accepted some other QoS 1 publish (ack, request).
    pub fn handed_other(&mut self) {
        self.handed.push_back(Tag::Other);
    }

    /// The client accepted the `finalize` of spill `id`.
    pub fn handed_finalize(&mut self, id: Uuid) {
        self.handed.push_back(Tag::Finalize(id));
    }

    fn pop_handed(&mut self) -> Option<Tag> {
        let tag = self.handed.pop_front();
        if tag.is_some() {
            self.fresh_pending = self.fresh_pending.saturating_sub(1);
        }
        tag
    }

    /// `Event::Outgoing(Outgoing::Publish(pkid))`.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 {
            return; // QoS 0: no ack will come.
        }
        if self.by_pkid.contains_key(&pkid) {
            return; // retransmission of a resumed session
        }
        let tag = match self.collided {
            Some((p, tag)) if p == pkid => {
                self.collided = None;
                Some(tag)
            }
            _ => self.pop_handed(),
        };
        if let Some(tag) = tag {
            if let Tag::Batch(id) = tag {
                if let Some(t) = self.batches.get_mut(&id) {
                    t.phase = Phase::Sent(pkid);
                }
            }
            self.by_pkid.insert(pkid, tag);
        }
    }

    /// `Event::Outgoing(Outgoing::AwaitAck(pkid))`: the next request collided on `pkid` and is
    /// held until that id is acknowledged.
    pub fn on_await_ack(&mut self, pkid: u16) {
        if let Some(tag) = self.pop_handed() {
            self.collided = Some((pkid, tag));
        }
    }

    /// `Event::Incoming(Packet::PubAck)`: returns what was acknowledged, if it matters.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Acked> {
        match self.by_pkid.remove(&pkid)? {
            Tag::Other => None,
            Tag::Finalize(id) => Some(Acked::Finalize(id)),
            Tag::Batch(id) => {
                let t = self.batches.remove(&id)?;
                self.order.retain(|x| *x != id);
                Some(Acked::Batch(t))
            }
        }
    }

    /// The connection dropped; `fresh_pending` = publishes without a packet id in rumqttc's
    /// pending queue (the oldest handed ones).
    pub fn on_disconnect(&mut self, fresh_pending: usize) {
        self.connected = false;
        self.fresh_pending = fresh_pending.min(self.handed.len());
    }

    /// CONNACK. Without a resumed session, everything rumqttc dropped goes back to Waiting.
    pub fn on_connack(&mut self, session_present: bool) {
        self.connected = true;
        if session_present {
            return;
        }
        let mut lost: Vec<Tag> = self.by_pkid.drain().map(|(_, t)| t).collect();
        lost.extend(self.collided.take().map(|(_, t)| t));
        for _ in 0..self.fresh_pending {
            if let Some(t) = self.handed.pop_front() {
                lost.push(t);
            }
        }
        self.fresh_pending = 0;
        for tag in lost {
            if let Tag::Batch(id) = tag {
                if let Some(t) = self.batches.get_mut(&id) {
                    t.phase = Phase::Waiting;
                }
            }
        }
    }

    /// A handed publish that the client refused (channel full): back to Waiting.
    pub fn unhand_last(&mut self, id: Uuid) {
        if self.handed.back() == Some(&Tag::Batch(id)) {
            self.handed.pop_back();
        }
        if let Some(t) = self.batches.get_mut(&id) {
            t.phase = Phase::Waiting;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(n: u8) -> Uuid {
        edge_protocol::ids::new_uuid_v7(1_700_000_000_000 + u64::from(n), [n; 10])
    }

    fn tracked(n: u8, kind: BatchKind, table: &str) -> Tracked {
        Tracked {
            batch_id: id(n),
            epoch: id(0),
            kind,
            table: table.into(),
            first_seq: i64::from(n) * 10,
            last_seq: i64::from(n) * 10 + 9,
            bytes: 100,
            phase: Phase::Waiting,
            attempts: 0,
        }
    }

    fn none(_: &str) -> bool {
        false
    }

    fn send_next(o: &mut Outbox) -> Uuid {
        let next = o.next_to_send(10, &none).unwrap();
        o.handed(next);
        next
    }

    #[test]
    fn happy_path_maps_pkids_in_fifo_order() {
        let mut o = Outbox::new();
        assert!(o.next_to_send(10, &none).is_none(), "not connected");
        o.on_connack(false);
        for n in 1..=3 {
            o.add(tracked(n, BatchKind::Rows, "t"));
        }
        let a = send_next(&mut o);
        o.handed_other(); // a control ack in between
        let b = send_next(&mut o);
        o.on_outgoing_publish(1);
        o.on_outgoing_publish(2);
        o.on_outgoing_publish(3);
        assert_eq!(o.get(&b).unwrap().phase, Phase::Sent(3));
        assert!(o.on_puback(2).is_none());
        assert_eq!(o.on_puback(3).unwrap().batch_id(), b);
        assert_eq!(o.on_puback(1).unwrap().batch_id(), a);
        assert!(o.on_puback(1).is_none(), "double ack is ignored");
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn resumed_session_retransmits_keep_their_mapping() {
        // b: handed but not yet sent when the link drops.
        let (mut o, a, b) = first_sent_then_handed(2);
        o.on_disconnect(1);
        o.on_connack(true);
        o.on_outgoing_publish(1); // retransmission of a
        o.on_outgoing_publish(2); // b leaves the pending queue
        assert_eq!(o.on_puback(1).unwrap().batch_id(), a);
        assert_eq!(o.on_puback(2).unwrap().batch_id(), b);
        assert!(o.is_empty());
    }

    #[test]
    fn lost_session_requeues_with_the_same_ids() {
        // b: in rumqttc pending at the disconnect.
        let (mut o, a, b) = first_sent_then_handed(3);
        o.on_disconnect(1);
        let c = send_next_when_connected(&mut o); // handed after the disconnect: still in channel
        o.on_connack(false);
        assert_eq!(o.get(&a).unwrap().phase, Phase::Waiting);
        assert_eq!(o.get(&b).unwrap().phase, Phase::Waiting);
        assert_eq!(o.get(&c).unwrap().phase, Phase::Handed);
        o.on_outgoing_publish(2); // c goes out from the channel
        assert_eq!(o.get(&c).unwrap().phase, Phase::Sent(2));
        // a and b are published again, same ids.
        assert_eq!(send_next(&mut o), a);
        assert_eq!(send_next(&mut o), b);
        assert_eq!(o.get(&a).unwrap().attempts, 2);
        o.on_outgoing_publish(3);
        o.on_outgoing_publish(4);
        assert_eq!(o.on_puback(4).unwrap().batch_id(), b);
        assert_eq!(o.on_puback(2).unwrap().batch_id(), c);
        assert_eq!(o.on_puback(3).unwrap().batch_id(), a);
    }

    /// A connected outbox with `batches` row batches of `t`: the first sent with pkid 1, the
    /// second handed to the client after it.
    fn first_sent_then_handed(batches: u8) -> (Outbox, Uuid, Uuid) {
        let mut o = Outbox::new();
        o.on_connack(false);
        for n in 1..=batches {
            o.add(tracked(n, BatchKind::Rows, "t"));
        }
        let a = send_next(&mut o);
        o.on_outgoing_publish(1);
        let b = send_next(&mut o);
        (o, a, b)
    }

    fn send_next_when_connected(o: &mut Outbox) -> Uuid {
        // The daemon may hand one more publish before it sees the disconnect event.
        o.connected = true;
        let id = send_next(o);
        o.connected = false;
        id
    }

    #[test]
    fn collisions_map_when_the_held_publish_goes_out() {
        let (mut o, a, b) = first_sent_then_handed(2);
        o.on_await_ack(1);
        assert_eq!(o.on_puback(1).unwrap().batch_id(), a);
        o.on_outgoing_publish(1);
        assert_eq!(o.on_puback(1).unwrap().batch_id(), b);
    }

    #[test]
    fn one_telemetry_batch_per_table_in_flight_and_pauses() {
        let mut o = Outbox::new();
        o.on_connack(false);
        o.add(tracked(1, BatchKind::Telemetry, "temps"));
        o.add(tracked(2, BatchKind::Telemetry, "temps"));
        o.add(tracked(3, BatchKind::Rows, "paused"));
        o.add(tracked(4, BatchKind::Telemetry, "other"));
        let blocked = |t: &str| t == "paused";
        let first = o.next_to_send(10, &blocked).unwrap();
        assert_eq!(first, id(1));
        o.handed(first);
        assert_eq!(o.next_to_send(10, &blocked).unwrap(), id(4));
        o.handed(id(4));
        assert!(o.next_to_send(10, &blocked).is_none());
        o.on_outgoing_publish(1);
        o.on_puback(1);
        assert_eq!(o.next_to_send(10, &blocked).unwrap(), id(2));
        assert!(o.next_to_send(1, &blocked).is_none(), "max_inflight");
    }
}
