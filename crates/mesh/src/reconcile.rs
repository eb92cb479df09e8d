//! Range-based set reconciliation, sans IO: which records does a peer hold
//! that we lack?
//!
//! Both sides sort their [`SyncItem`]s. The initiator sends the whole item
//! space as one or more ranges, each with a [`Fingerprint`] of its items (or,
//! when it has few items there, the items themselves). The other side
//! compares: equal fingerprints settle a range; unequal ones are split into
//! [`ReconcileConfig::buckets`] smaller ranges, until a side holds at most
//! [`ReconcileConfig::id_list_threshold`] items in a range and sends them as
//! a list. A responder that receives a list answers with the items the list
//! lacked ([`RangeMode::Missing`]); an initiator that receives a list works
//! out what it lacks itself. Only the initiator learns what it needs: sync is
//! pull-only, and every node runs it as initiator towards its peers, so a
//! peer never pushes records nobody asked for.
//!
//! Then the initiator fetches what it lacks, in item order (parents first),
//! [`ReconcileConfig::max_fetch_ids`] ids per request.
//!
//! Bounds: every message stays under [`ReconcileConfig::max_message_cost`]
//! (when a reply would grow past it, the rest of the item space is sent as
//! one fingerprint and settled in later rounds); a session gives up after
//! [`ReconcileConfig::max_rounds`] rounds; it keeps at most
//! [`ReconcileConfig::max_need`] ids to fetch (the rest is found by the next
//! session). Nothing a peer sends can panic this module: malformed messages
//! are errors.
//!
//! [`Session`] is the initiator's state machine: [`Session::poll_request`]
//! gives the next request to send, [`Session::handle_response`] takes the
//! answer. [`respond`] and [`answer_fetch`] are the responder: stateless.

use std::collections::{BTreeSet, VecDeque};

use tincan_core::RecordId;

use crate::protocol::{
    Bound, Fingerprint, Range, RangeMode, Scope, SyncItem, SyncRequest, SyncResponse,
};

/// Tuning of reconciliation. Both sides may use different values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Into how many ranges a mismatching range is split.
    pub buckets: usize,
    /// A side with at most this many items in a range sends them as a list.
    pub id_list_threshold: usize,
    /// Size limit of one message, in units of about 33 bytes: an item costs
    /// 1, a range 2.
    pub max_message_cost: usize,
    /// Reconciliation rounds before a session gives up.
    pub max_rounds: usize,
    /// Most ids a session keeps to fetch; past it further ids are dropped
    /// (and counted) and found again by the next session.
    pub max_need: usize,
    /// Most ids per fetch request.
    pub max_fetch_ids: usize,
    /// Most bytes of records in one fetch response.
    pub max_fetch_response_bytes: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            buckets: 16,
            id_list_threshold: 32,
            // About 270 KB: under protocol::MAX_REQUEST_BYTES.
            max_message_cost: 8192,
            max_rounds: 64,
            max_need: 200_000,
            max_fetch_ids: 2048,
            // Under protocol::MAX_RESPONSE_BYTES with room for framing.
            max_fetch_response_bytes: 1536 * 1024,
        }
    }
}

impl ReconcileConfig {
    /// The same config with its values raised to the least that lets
    /// reconciliation make progress every round.
    fn sane(&self) -> ReconcileConfig {
        let buckets = self.buckets.clamp(2, 1024);
        let id_list_threshold = self.id_list_threshold.clamp(1, 4096);
        let reserve = 2 * buckets + 2 + id_list_threshold + 4;
        ReconcileConfig {
            buckets,
            id_list_threshold,
            max_message_cost: self.max_message_cost.max(2 * reserve),
            max_rounds: self.max_rounds.max(1),
            max_need: self.max_need.max(1),
            max_fetch_ids: self.max_fetch_ids.max(1),
            max_fetch_response_bytes: self.max_fetch_response_bytes.max(1),
        }
    }

    /// What one range's reply may cost at most, plus a closing fingerprint.
    fn reserve(&self) -> usize {
        (2 * self.buckets).max(2 + self.id_list_threshold) + 4
    }
}

/// A peer sent something reconciliation cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The message breaks the protocol; the peer is faulty or hostile.
    #[error("the peer sent a malformed sync message ({0}); it is ignored")]
    Malformed(&'static str),
    /// The session needed more rounds than allowed.
    #[error(
        "sync did not settle within {0} rounds; what was found is fetched and the next sync goes on"
    )]
    TooManyRounds(usize),
    /// A response that does not answer the request in flight.
    #[error("the peer answered a sync request with the wrong kind of response")]
    UnexpectedResponse,
    /// The peer refused.
    #[error("the peer refused to sync: {0}")]
    Refused(String),
    /// A fetch answer carried a record whose id was not asked for (or one
    /// asked for twice): sync is pull-only, so the peer is faulty or hostile.
    #[error("the peer answered a fetch with records nobody asked for; the answer is dropped")]
    Unrequested,
}

impl ReconcileError {
    /// Whether the error shows the peer broke the protocol (as opposed to
    /// being busy, refusing, or a large difference taking many rounds): the
    /// caller ends the session and lowers the peer's score.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            ReconcileError::Malformed(_)
                | ReconcileError::UnexpectedResponse
                | ReconcileError::Unrequested
        )
    }
}

/// The digest of a run of items.
pub fn fingerprint(items: &[SyncItem]) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    h.update(&(items.len() as u64).to_be_bytes());
    for it in items {
        h.update(&[it.rank]);
        h.update(&it.id.0);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Fingerprint(out)
}

fn upper_index(mine: &[SyncItem], upper: Bound) -> usize {
    match upper {
        Bound::End => mine.len(),
        Bound::Item(x) => mine.partition_point(|m| *m < x),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

/// Builds a reply within the cost budget.
struct Reply {
    ranges: Vec<Range>,
    cost: usize,
}

impl Reply {
    fn push(&mut self, upper: Bound, mode: RangeMode) {
        let items = match &mode {
            RangeMode::IdList(v) | RangeMode::Missing(v) => v.len(),
            RangeMode::Skip | RangeMode::Fingerprint(_) => 0,
        };
        // Adjacent settled ranges merge into one.
        if matches!(mode, RangeMode::Skip)
            && let Some(last) = self.ranges.last_mut()
            && matches!(last.mode, RangeMode::Skip)
        {
            last.upper = upper;
            return;
        }
        self.cost += 2 + items;
        self.ranges.push(Range { upper, mode });
    }

    /// Splits `slice` (my items in a range ending at `upper`) into a list or
    /// fingerprinted buckets.
    fn split(&mut self, slice: &[SyncItem], upper: Bound, cfg: &ReconcileConfig) {
        if slice.len() <= cfg.id_list_threshold {
            self.push(upper, RangeMode::IdList(slice.to_vec()));
            return;
        }
        let chunk = slice.len().div_ceil(cfg.buckets);
        let mut start = 0;
        while start < slice.len() {
            let end = (start + chunk).min(slice.len());
            let bound = match slice.get(end) {
                Some(next) => Bound::Item(*next),
                None => upper,
            };
            self.push(
                bound,
                RangeMode::Fingerprint(fingerprint(&slice[start..end])),
            );
            start = end;
        }
    }

    fn all_skip(&self) -> bool {
        self.ranges
            .iter()
            .all(|r| matches!(r.mode, RangeMode::Skip))
    }
}

/// Checks the framing of an incoming message: non-empty, uppers strictly
/// increasing, ending at `End`, lists sorted and inside their range, sizes
/// within budget.
fn validate(ranges: &[Range], cfg: &ReconcileConfig) -> Result<(), ReconcileError> {
    let Some(last) = ranges.last() else {
        return Err(ReconcileError::Malformed("no ranges"));
    };
    if last.upper != Bound::End {
        return Err(ReconcileError::Malformed(
            "ranges do not cover the item space",
        ));
    }
    // Twice our own budget: a peer may be configured differently, not wildly.
    let mut cost = 0usize;
    let mut lower: Option<SyncItem> = None;
    let mut prev_upper: Option<Bound> = None;
    for r in ranges {
        if let Some(p) = prev_upper
            && r.upper <= p
        {
            return Err(ReconcileError::Malformed("ranges out of order"));
        }
        cost += 2;
        if let RangeMode::IdList(v) | RangeMode::Missing(v) = &r.mode {
            cost += v.len();
            let mut prev: Option<SyncItem> = None;
            for it in v {
                if prev.is_some_and(|p| *it <= p)
                    || lower.is_some_and(|l| *it < l)
                    || Bound::Item(*it) >= r.upper
                {
                    return Err(ReconcileError::Malformed(
                        "list unsorted or outside its range",
                    ));
                }
                prev = Some(*it);
            }
        }
        if cost > 2 * cfg.max_message_cost {
            return Err(ReconcileError::Malformed("message over the size limit"));
        }
        prev_upper = Some(r.upper);
        lower = match r.upper {
            Bound::Item(i) => Some(i),
            Bound::End => None,
        };
    }
    Ok(())
}

/// Items of sorted `a` not in sorted `b`.
fn difference(a: &[SyncItem], b: &[SyncItem]) -> Vec<SyncItem> {
    let mut out = Vec::new();
    let mut j = 0;
    for x in a {
        while j < b.len() && b[j] < *x {
            j += 1;
        }
        if j >= b.len() || b[j] != *x {
            out.push(*x);
        }
    }
    out
}

/// One side's processing of a message: the reply and what it learnt it lacks.
fn process(
    mine: &[SyncItem],
    incoming: &[Range],
    role: Role,
    cfg: &ReconcileConfig,
) -> Result<(Reply, Vec<SyncItem>), ReconcileError> {
    validate(incoming, cfg)?;
    let mut reply = Reply {
        ranges: Vec::new(),
        cost: 0,
    };
    let mut need = Vec::new();
    let mut lo = 0usize;
    for r in incoming {
        let hi = upper_index(mine, r.upper).max(lo);
        let slice = &mine[lo..hi];
        let left = cfg.max_message_cost.saturating_sub(reply.cost);
        if left < cfg.reserve() {
            // Out of budget: the rest of the space goes back as one
            // fingerprint and is settled in the next rounds.
            reply.push(Bound::End, RangeMode::Fingerprint(fingerprint(&mine[lo..])));
            return Ok((reply, need));
        }
        match &r.mode {
            RangeMode::Skip => reply.push(r.upper, RangeMode::Skip),
            RangeMode::Fingerprint(fp) => {
                if fingerprint(slice) == *fp {
                    reply.push(r.upper, RangeMode::Skip);
                } else {
                    reply.split(slice, r.upper, cfg);
                }
            }
            RangeMode::IdList(theirs) => {
                need.extend(difference(theirs, slice));
                match role {
                    Role::Initiator => reply.push(r.upper, RangeMode::Skip),
                    Role::Responder => {
                        let lack = difference(slice, theirs);
                        let room = left - 4;
                        if lack.len() + 2 <= room {
                            reply.push(r.upper, RangeMode::Missing(lack));
                        } else {
                            // Send what fits; the rest of the space is
                            // fingerprinted and comes back as a list again.
                            let k = room.saturating_sub(2).max(1).min(lack.len() - 1);
                            let cut = lack[k];
                            reply.push(Bound::Item(cut), RangeMode::Missing(lack[..k].to_vec()));
                            let from = upper_index(mine, Bound::Item(cut));
                            reply.push(
                                Bound::End,
                                RangeMode::Fingerprint(fingerprint(&mine[from..])),
                            );
                            return Ok((reply, need));
                        }
                    }
                }
            }
            RangeMode::Missing(ids) => {
                if role == Role::Responder {
                    return Err(ReconcileError::Malformed("a request carried Missing"));
                }
                need.extend(difference(ids, slice));
                reply.push(r.upper, RangeMode::Skip);
            }
        }
        lo = hi;
    }
    Ok((reply, need))
}

/// The responder's answer to one reconciliation round over its sorted,
/// deduplicated items `mine`.
pub fn respond(
    mine: &[SyncItem],
    ranges: &[Range],
    cfg: &ReconcileConfig,
) -> Result<Vec<Range>, ReconcileError> {
    let cfg = cfg.sane();
    Ok(process(mine, ranges, Role::Responder, &cfg)?.0.ranges)
}

/// The responder's answer to a fetch: records in request order from
/// `lookup`, until [`ReconcileConfig::max_fetch_response_bytes`] (the first
/// record always goes, so every answer makes progress). Ids past
/// [`ReconcileConfig::max_fetch_ids`] are not served.
pub fn answer_fetch(
    ids: &[RecordId],
    mut lookup: impl FnMut(&RecordId) -> Option<Vec<u8>>,
    cfg: &ReconcileConfig,
) -> SyncResponse {
    let cfg = cfg.sane();
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut served = 0u32;
    for id in ids.iter().take(cfg.max_fetch_ids) {
        if let Some(r) = lookup(id) {
            if !records.is_empty() && bytes + r.len() + 8 > cfg.max_fetch_response_bytes {
                break;
            }
            bytes += r.len() + 8;
            records.push(r);
        }
        served += 1;
    }
    SyncResponse::Records { served, records }
}

/// What a session did, for logs and figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Reconciliation rounds (request and response).
    pub rounds: usize,
    /// Fetch requests sent.
    pub fetches: usize,
    /// Ids found missing here.
    pub needed: usize,
    /// Ids dropped because [`ReconcileConfig::max_need`] was reached.
    pub need_dropped: usize,
    /// Records received.
    pub records: usize,
}

#[derive(Debug)]
enum Phase {
    /// The next reconcile message, ready to send.
    Send(Vec<Range>),
    /// A reconcile request is in flight.
    AwaitReconcile,
    /// Fetching what was found missing.
    Fetch,
    /// A fetch is in flight.
    AwaitFetch(Vec<RecordId>),
    /// Finished (or given up).
    Done,
}

/// The initiator's side of one sync with one peer over one scope.
#[derive(Debug)]
pub struct Session {
    scope: Scope,
    cfg: ReconcileConfig,
    mine: Vec<SyncItem>,
    phase: Phase,
    need: BTreeSet<SyncItem>,
    fetch: VecDeque<RecordId>,
    stats: SessionStats,
    error: Option<ReconcileError>,
}

impl Session {
    /// A session for `scope`, from this node's items (any order; they are
    /// sorted and deduplicated here).
    pub fn new(scope: Scope, mut mine: Vec<SyncItem>, cfg: &ReconcileConfig) -> Session {
        let cfg = cfg.sane();
        mine.sort_unstable();
        mine.dedup();
        let mut first = Reply {
            ranges: Vec::new(),
            cost: 0,
        };
        if mine.len() <= cfg.id_list_threshold {
            first.push(Bound::End, RangeMode::IdList(mine.clone()));
        } else {
            first.push(Bound::End, RangeMode::Fingerprint(fingerprint(&mine)));
        }
        Session {
            scope,
            cfg,
            mine,
            phase: Phase::Send(first.ranges),
            need: BTreeSet::new(),
            fetch: VecDeque::new(),
            stats: SessionStats::default(),
            error: None,
        }
    }

    /// The scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The next request to send, if one is due now. At most one request is
    /// in flight at a time.
    pub fn poll_request(&mut self) -> Option<SyncRequest> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Send(ranges) => {
                self.stats.rounds += 1;
                self.phase = Phase::AwaitReconcile;
                Some(SyncRequest::Reconcile {
                    scope: self.scope,
                    ranges,
                })
            }
            Phase::Fetch => {
                let n = self.cfg.max_fetch_ids.min(self.fetch.len());
                if n == 0 {
                    self.phase = Phase::Done;
                    return None;
                }
                let ids: Vec<RecordId> = self.fetch.drain(..n).collect();
                self.stats.fetches += 1;
                self.phase = Phase::AwaitFetch(ids.clone());
                Some(SyncRequest::Fetch {
                    scope: self.scope,
                    ids,
                })
            }
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Takes the answer to the request in flight. Returns the records
    /// received, each as `decode` makes it from its wire bytes (not yet
    /// verified: the caller verifies and applies them). `decode` gives a
    /// record's id and its decoded form, or `None` for bytes that are no
    /// record. A fetch answer must hold only records whose ids were asked
    /// for, each once; anything else drops the whole answer and ends the
    /// session with [`ReconcileError::Unrequested`] (sync is pull-only). On
    /// error the session ends, after fetching whatever it had found missing
    /// so far where the error allows.
    pub fn handle_response<R>(
        &mut self,
        response: SyncResponse,
        mut decode: impl FnMut(Vec<u8>) -> Option<(RecordId, R)>,
    ) -> Result<Vec<R>, ReconcileError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        match (phase, response) {
            (Phase::AwaitReconcile, SyncResponse::Reconcile { ranges }) => {
                let (reply, need) = match process(&self.mine, &ranges, Role::Initiator, &self.cfg) {
                    Ok(x) => x,
                    Err(e) => return Err(self.end_reconcile_with(e)),
                };
                for item in need {
                    if self.need.len() >= self.cfg.max_need {
                        self.stats.need_dropped += 1;
                    } else if self.need.insert(item) {
                        self.stats.needed += 1;
                    }
                }
                if reply.all_skip() {
                    self.end_reconcile();
                } else if self.stats.rounds >= self.cfg.max_rounds {
                    return Err(
                        self.end_reconcile_with(ReconcileError::TooManyRounds(self.stats.rounds))
                    );
                } else {
                    self.phase = Phase::Send(reply.ranges);
                }
                Ok(Vec::new())
            }
            (Phase::AwaitFetch(ids), SyncResponse::Records { served, records }) => {
                let served = served as usize;
                if served == 0 || served > ids.len() || records.len() > served {
                    self.fetch.clear();
                    return Err(self.fail(ReconcileError::Malformed("fetch answer out of bounds")));
                }
                let mut asked: std::collections::HashSet<RecordId> =
                    ids[..served].iter().copied().collect();
                let mut out = Vec::with_capacity(records.len());
                for bytes in records {
                    let Some((id, record)) = decode(bytes) else {
                        self.fetch.clear();
                        return Err(
                            self.fail(ReconcileError::Malformed("a record that does not decode"))
                        );
                    };
                    // Removing it also catches a record served twice.
                    if !asked.remove(&id) {
                        self.fetch.clear();
                        return Err(self.fail(ReconcileError::Unrequested));
                    }
                    out.push(record);
                }
                // Ids not covered go to the front of the queue, in order.
                for id in ids[served..].iter().rev() {
                    self.fetch.push_front(*id);
                }
                self.stats.records += out.len();
                self.phase = Phase::Fetch;
                Ok(out)
            }
            (Phase::AwaitReconcile, SyncResponse::Refused { reason }) => {
                Err(self.end_reconcile_with(ReconcileError::Refused(reason)))
            }
            (Phase::AwaitFetch(_), SyncResponse::Refused { reason }) => {
                self.fetch.clear();
                Err(self.fail(ReconcileError::Refused(reason)))
            }
            (_, _) => {
                self.fetch.clear();
                Err(self.fail(ReconcileError::UnexpectedResponse))
            }
        }
    }

    /// The request in flight failed (timeout, connection closed): the
    /// session ends.
    pub fn request_failed(&mut self) {
        self.fetch.clear();
        self.phase = Phase::Done;
    }

    /// Ends reconciliation: what was found missing is fetched next, in item
    /// order (parents before what depends on them).
    fn end_reconcile(&mut self) {
        self.fetch = std::mem::take(&mut self.need)
            .into_iter()
            .map(|i| i.id)
            .collect();
        self.phase = Phase::Fetch;
    }

    /// Ends reconciliation with an error; what was found is still fetched.
    fn end_reconcile_with(&mut self, e: ReconcileError) -> ReconcileError {
        self.end_reconcile();
        self.error = Some(e.clone());
        e
    }

    fn fail(&mut self, e: ReconcileError) -> ReconcileError {
        self.phase = Phase::Done;
        self.error = Some(e.clone());
        e
    }

    /// Whether the session has nothing more to do.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
            || (matches!(self.phase, Phase::Fetch) && self.fetch.is_empty())
    }

    /// Whether the session is waiting for an answer.
    pub fn is_awaiting(&self) -> bool {
        matches!(self.phase, Phase::AwaitReconcile | Phase::AwaitFetch(_))
    }

    /// What it did so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The error that ended reconciliation early, if one did.
    pub fn error(&self) -> Option<&ReconcileError> {
        self.error.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn item(n: u32) -> SyncItem {
        let h = blake3::hash(&n.to_be_bytes());
        SyncItem {
            rank: (n % 5) as u8,
            id: RecordId(*h.as_bytes()),
        }
    }

    /// Feeds a response to a session whose records are, in these tests,
    /// their own ids.
    fn respond_to(s: &mut Session, r: SyncResponse) -> Result<Vec<Vec<u8>>, ReconcileError> {
        s.handle_response(r, |b| Some((RecordId(b.clone().try_into().ok()?), b)))
    }

    /// The record bytes of an item, in this test: its id.
    fn bytes_of(id: &RecordId) -> Vec<u8> {
        id.0.to_vec()
    }

    /// Runs a session of `a` against a responder holding `b` until it ends;
    /// returns what `a` received and the stats.
    fn run(
        a: &BTreeSet<SyncItem>,
        b: &BTreeSet<SyncItem>,
        cfg: &ReconcileConfig,
    ) -> (BTreeSet<RecordId>, SessionStats, Vec<RecordId>) {
        let mine: Vec<_> = a.iter().copied().collect();
        let theirs: Vec<_> = b.iter().copied().collect();
        let by_id: BTreeMap<RecordId, SyncItem> = theirs.iter().map(|i| (i.id, *i)).collect();
        let mut s = Session::new(Scope::Profiles, mine, cfg);
        let mut got = BTreeSet::new();
        let mut order = Vec::new();
        for _ in 0..10_000 {
            let Some(req) = s.poll_request() else { break };
            let resp = match req {
                SyncRequest::Reconcile { ranges, .. } => SyncResponse::Reconcile {
                    ranges: respond(&theirs, &ranges, cfg).unwrap(),
                },
                SyncRequest::Fetch { ids, .. } => {
                    answer_fetch(&ids, |id| by_id.get(id).map(|i| bytes_of(&i.id)), cfg)
                }
            };
            if let Ok(records) = respond_to(&mut s, resp) {
                for r in records {
                    let id = RecordId(r.try_into().unwrap());
                    order.push(id);
                    got.insert(id);
                }
            }
        }
        assert!(s.is_done(), "session did not end");
        assert_eq!(s.error(), None, "{:?}", s.stats());
        if std::env::var_os("RECONCILE_ROUNDS").is_some() {
            eprintln!(
                "cost={} n={} m={} rounds={}",
                cfg.max_message_cost,
                a.len(),
                b.len(),
                s.stats().rounds
            );
        }
        (got, s.stats(), order)
    }

    fn small() -> ReconcileConfig {
        ReconcileConfig {
            buckets: 4,
            id_list_threshold: 4,
            max_message_cost: 64,
            max_fetch_ids: 16,
            max_fetch_response_bytes: 32 * 10,
            // A budget this small moves ~50 ids a round: bigger differences
            // take many rounds, so the bound is raised to match.
            max_rounds: 128,
            ..ReconcileConfig::default()
        }
    }

    #[test]
    fn empty_against_full_fetches_everything_in_rank_order() {
        let b: BTreeSet<_> = (0..10_000).map(item).collect();
        let (got, stats, order) = run(&BTreeSet::new(), &b, &ReconcileConfig::default());
        assert_eq!(got.len(), 10_000);
        assert!(stats.rounds <= 3, "{stats:?}");
        let ranks: Vec<u8> = order
            .iter()
            .map(|id| b.iter().find(|i| i.id == *id).unwrap().rank)
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "not parents first");
    }

    #[test]
    fn equal_sets_settle_in_one_round() {
        let a: BTreeSet<_> = (0..5000).map(item).collect();
        let (got, stats, _) = run(&a, &a, &ReconcileConfig::default());
        assert!(got.is_empty());
        assert_eq!(stats.rounds, 1);
        assert_eq!(stats.fetches, 0);
    }

    #[test]
    fn one_difference_in_a_large_set_costs_few_rounds() {
        let a: BTreeSet<_> = (0..10_000).map(item).collect();
        let mut b = a.clone();
        b.insert(item(1_000_000));
        let (got, stats, _) = run(&a, &b, &ReconcileConfig::default());
        assert_eq!(got, BTreeSet::from([item(1_000_000).id]));
        assert!(stats.rounds <= 4, "{stats:?}");
    }

    #[test]
    fn large_sets_with_differences_on_both_sides_settle_in_few_rounds() {
        let common: BTreeSet<_> = (0..10_000).map(item).collect();
        let mut a = common.clone();
        a.extend((0..1000).map(|n| item(1_000_000 + n)));
        let mut b = common;
        b.extend((0..1000).map(|n| item(2_000_000 + n)));
        let (got, stats, _) = run(&a, &b, &ReconcileConfig::default());
        assert_eq!(got.len(), 1000);
        assert!(stats.rounds <= 4, "{stats:?}");
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cfg = ReconcileConfig::default();
        let mine: Vec<_> = (0..10).map(item).collect();
        assert!(respond(&mine, &[], &cfg).is_err());
        let not_covering = [Range {
            upper: Bound::Item(item(1)),
            mode: RangeMode::Skip,
        }];
        assert!(respond(&mine, &not_covering, &cfg).is_err());
        let mut unsorted: Vec<_> = (0..3).map(item).collect();
        unsorted.sort();
        unsorted.reverse();
        let bad_list = [Range {
            upper: Bound::End,
            mode: RangeMode::IdList(unsorted),
        }];
        assert!(respond(&mine, &bad_list, &cfg).is_err());
        let missing_in_request = [Range {
            upper: Bound::End,
            mode: RangeMode::Missing(vec![]),
        }];
        assert!(respond(&mine, &missing_in_request, &cfg).is_err());
        let huge = [Range {
            upper: Bound::End,
            mode: RangeMode::IdList(
                (0..20_000)
                    .map(item)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            ),
        }];
        assert!(respond(&mine, &huge, &cfg).is_err());
    }

    #[test]
    fn a_bad_fetch_answer_ends_the_session() {
        let b: BTreeSet<_> = (0..10).map(item).collect();
        let theirs: Vec<_> = b.iter().copied().collect();
        let cfg = ReconcileConfig::default();
        let mut s = Session::new(Scope::Profiles, Vec::new(), &cfg);
        let Some(SyncRequest::Reconcile { ranges, .. }) = s.poll_request() else {
            panic!("first request reconciles")
        };
        respond_to(
            &mut s,
            SyncResponse::Reconcile {
                ranges: respond(&theirs, &ranges, &cfg).unwrap(),
            },
        )
        .unwrap();
        assert!(matches!(s.poll_request(), Some(SyncRequest::Fetch { .. })));
        let err = respond_to(
            &mut s,
            SyncResponse::Records {
                served: 0,
                records: vec![],
            },
        )
        .unwrap_err();
        assert!(matches!(err, ReconcileError::Malformed(_)));
        assert!(s.is_done());
        assert!(s.poll_request().is_none());
    }

    #[test]
    fn records_nobody_asked_for_drop_the_answer_and_end_the_session() {
        let b: BTreeSet<_> = (0..10).map(item).collect();
        let theirs: Vec<_> = b.iter().copied().collect();
        let cfg = ReconcileConfig::default();
        for lie in [
            // One record asked for, then one that was not.
            vec![theirs[0].id, item(99).id],
            // The same record twice.
            vec![theirs[0].id, theirs[0].id],
        ] {
            let mut s = Session::new(Scope::Profiles, Vec::new(), &cfg);
            let Some(SyncRequest::Reconcile { ranges, .. }) = s.poll_request() else {
                panic!("first request reconciles")
            };
            respond_to(
                &mut s,
                SyncResponse::Reconcile {
                    ranges: respond(&theirs, &ranges, &cfg).unwrap(),
                },
            )
            .unwrap();
            let Some(SyncRequest::Fetch { ids, .. }) = s.poll_request() else {
                panic!("then it fetches")
            };
            let err = respond_to(
                &mut s,
                SyncResponse::Records {
                    served: ids.len() as u32,
                    records: lie.iter().map(bytes_of).collect(),
                },
            )
            .unwrap_err();
            assert_eq!(err, ReconcileError::Unrequested);
            assert!(err.is_misbehaviour());
            assert!(s.is_done());
            assert!(s.poll_request().is_none());
        }
    }

    fn arb_item() -> impl Strategy<Value = SyncItem> {
        (0u8..5, any::<u8>()).prop_map(|(rank, b)| SyncItem {
            rank,
            id: RecordId([b; 32]),
        })
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<Range>> {
        let mode = prop_oneof![
            Just(RangeMode::Skip),
            any::<[u8; 16]>().prop_map(|f| RangeMode::Fingerprint(Fingerprint(f))),
            proptest::collection::vec(arb_item(), 0..8).prop_map(RangeMode::IdList),
            proptest::collection::vec(arb_item(), 0..8).prop_map(RangeMode::Missing),
        ];
        let upper = prop_oneof![Just(Bound::End), arb_item().prop_map(Bound::Item)];
        proptest::collection::vec((upper, mode), 0..6).prop_map(|v| {
            v.into_iter()
                .map(|(upper, mode)| Range { upper, mode })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a peer sends, neither side panics, and a session fed
        /// nonsense still ends.
        #[test]
        fn arbitrary_messages_never_panic(
            mine in proptest::collection::vec(arb_item(), 0..50),
            msgs in proptest::collection::vec(arb_ranges(), 1..6),
        ) {
            let mut sorted = mine.clone();
            sorted.sort();
            sorted.dedup();
            let cfg = small();
            for m in &msgs {
                let _ = respond(&sorted, m, &cfg);
            }
            let mut s = Session::new(Scope::Profiles, mine, &cfg);
            for m in msgs {
                match s.poll_request() {
                    Some(SyncRequest::Reconcile { .. }) => {
                        let _ = respond_to(&mut s, SyncResponse::Reconcile { ranges: m });
                    }
                    Some(SyncRequest::Fetch { ids, .. }) => {
                        let _ = respond_to(&mut s, SyncResponse::Records {
                            served: ids.len() as u32,
                            records: vec![],
                        });
                    }
                    None => break,
                }
            }
            for _ in 0..10_000 {
                match s.poll_request() {
                    Some(SyncRequest::Fetch { ids, .. }) => {
                        let _ = respond_to(&mut s, SyncResponse::Records {
                            served: ids.len() as u32,
                            records: vec![],
                        });
                    }
                    Some(SyncRequest::Reconcile { .. }) => s.request_failed(),
                    None => break,
                }
            }
            prop_assert!(s.is_done());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Two random sets reconcile to their union (each side pulling once),
        /// within the round bound, with small buckets and tight budgets so
        /// every path (splits, lists, cut-off replies) runs.
        #[test]
        fn random_sets_reconcile_to_their_union(
            common in 0u32..600,
            only_a in 0u32..300,
            only_b in 0u32..300,
            small_cfg in any::<bool>(),
        ) {
            let cfg = if small_cfg { small() } else { ReconcileConfig::default() };
            let common_set: BTreeSet<_> = (0..common).map(item).collect();
            let mut a = common_set.clone();
            a.extend((0..only_a).map(|n| item(1_000_000 + n)));
            let mut b = common_set;
            b.extend((0..only_b).map(|n| item(2_000_000 + n)));
            let (got_a, stats_a, _) = run(&a, &b, &cfg);
            let (got_b, stats_b, _) = run(&b, &a, &cfg);
            let ids = |s: &BTreeSet<SyncItem>| s.iter().map(|i| i.id).collect::<BTreeSet<_>>();
            let union: BTreeSet<_> = ids(&a).union(&ids(&b)).copied().collect();
            let a_after: BTreeSet<_> = ids(&a).union(&got_a).copied().collect();
            let b_after: BTreeSet<_> = ids(&b).union(&got_b).copied().collect();
            prop_assert_eq!(&a_after, &union);
            prop_assert_eq!(&b_after, &union);
            // run() asserts that no session gave up; with the default
            // budget everything here settles in a few rounds.
            let bound = if small_cfg { cfg.max_rounds } else { 4 };
            prop_assert!(stats_a.rounds <= bound && stats_b.rounds <= bound,
                "{stats_a:?} {stats_b:?}");
            // Nothing fetched that was already there.
            prop_assert!(got_a.is_disjoint(&ids(&a)));
            prop_assert_eq!(stats_a.needed, only_b as usize);
        }
    }
}
