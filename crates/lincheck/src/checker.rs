//! The search: Wing & Gong's algorithm with Lowe's just-in-time
//! linearization and memoization, the same shape as Porcupine's
//! `checkSingle`.
//!
//! Every operation contributes a call event and (if its outcome is known) a
//! return event to a doubly-linked list sorted by time. Walking the list from
//! the head, a call event is a candidate to linearize next: if the model
//! accepts it and the (set of linearized operations, state) pair has not
//! been explored before, the operation is "lifted" out of the list and pushed
//! on an undo stack. Reaching a return event means that operation had to take
//! effect already and could not, so the search pops the most recent choice,
//! puts it back, and tries the next candidate after it.
//!
//! Operations with an unknown outcome have no return event: nothing ever
//! forces them to be placed. The search succeeds as soon as every operation
//! with a known outcome is linearized; unknown operations still in the list
//! at that point are the ones that never took effect.
//!
//! One addition over Porcupine makes unknown operations cheaper: the memo
//! cache prunes a node whose unknown set is a superset of an explored node's
//! with the same known set and state (see [`Cache`]).
//!
//! (Trying known candidates before unknown ones was measured and rejected:
//! it made linearizable histories with 5% unknown ops 300x slower.)

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use crate::model::{Model, Operation, Partition};

/// How often (in loop iterations) the wall clock is read; reading it on every
/// step would cost more than the step itself.
const DEADLINE_CHECK_INTERVAL_STEPS: u64 = 4096;
/// Reports list at most this many operations of the prefix and of the
/// pending set, so a failure on a 10k-op history stays readable.
const REPORT_OPS_MAX: usize = 20;

/// Limits that keep a check from running forever on a pathological history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Distinct (linearized set, state) pairs the search may visit in one
    /// partition before giving up with [`CheckResult::Unknown`]. Each costs
    /// memory for its cache entry.
    pub max_states_per_partition: u64,
    /// Wall-clock limit for the whole check; `None` (the default) means no limit. A verdict
    /// that depends on a wall-clock limit depends on the machine's speed: tests leave it off
    /// and bound the search by states (and their histories by construction) instead.
    pub max_duration: Option<Duration>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_states_per_partition: 1_000_000,
            max_duration: None,
        }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Some order of the operations respects real time and the model.
    Ok,
    /// No such order exists.
    Illegal(IllegalReport),
    /// The search ran out of budget before reaching a verdict.
    Unknown {
        /// The partition that exhausted the budget.
        partition: String,
        /// Why the search stopped.
        reason: String,
    },
}

impl CheckResult {
    /// True for [`CheckResult::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    /// True for [`CheckResult::Illegal`].
    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal(_))
    }
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckResult::Ok => write!(f, "linearizable"),
            CheckResult::Illegal(report) => write!(f, "{}", report.detail),
            CheckResult::Unknown { partition, reason } => {
                write!(f, "no verdict for partition {partition}: {reason}")
            }
        }
    }
}

/// Why a history is not linearizable. Operation numbers are indices into the
/// history given to [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IllegalReport {
    /// The partition (for the KV model: the key) with no valid order.
    pub partition: String,
    /// Human-readable explanation: the longest linearizable prefix found, the
    /// operation that could not take effect before it returned, and every
    /// candidate that could not be placed next.
    pub detail: String,
    /// The longest sequence of operations the search managed to linearize.
    pub longest_prefix: Vec<usize>,
    /// The operation whose return ended that prefix: it had to take effect
    /// before returning, and no order allowed it.
    pub blocking_op: usize,
    /// Operations that were called but not yet linearized at that point.
    pub unplaced_ops: Vec<usize>,
}

/// Why [`check`] refused a history: these are bugs in whoever recorded it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// Return before call.
    #[error("operation {index} returned at {return_time} before it was called at {call}; record times from one monotonic clock")]
    ReturnBeforeCall {
        /// Index in the history.
        index: usize,
        /// Its call time.
        call: u64,
        /// Its return time.
        return_time: u64,
    },
    /// `output` and `return_time` disagree on whether the outcome is known.
    #[error("operation {index} has {what}; an operation is either completed (output and return time) or unknown (neither)")]
    HalfCompleted {
        /// Index in the history.
        index: usize,
        /// Which half is present.
        what: &'static str,
    },
    /// The model's `partition` named an operation that does not exist.
    #[error("partition {partition} names operation {index}, but the history has {len} operations; the model's partition function is wrong")]
    PartitionIndexOutOfRange {
        /// The partition's label.
        partition: String,
        /// The bad index.
        index: usize,
        /// History length.
        len: usize,
    },
    /// The model's `partition` put one operation in two partitions.
    #[error("operation {index} appears in more than one partition (second: {partition}); the model's partition function is wrong")]
    PartitionOverlap {
        /// The second partition naming it.
        partition: String,
        /// The operation.
        index: usize,
    },
}

/// Checks whether `history` is linearizable with respect to `model`.
///
/// Partitions are checked one after another; the first illegal one is
/// reported. If some partition exhausts the budget and none is illegal, the
/// result is [`CheckResult::Unknown`].
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    options: &CheckOptions,
) -> Result<CheckResult, HistoryError> {
    validate_history(history)?;
    let partitions = model.partition(history);
    validate_partitions(&partitions, history.len())?;

    // checked_add: a huge max_duration means "no limit", not a panic.
    let deadline = options
        .max_duration
        .and_then(|limit| Instant::now().checked_add(limit));
    let mut first_unknown = None;
    for partition in &partitions {
        let op_indices: Vec<usize> = partition
            .op_indices
            .iter()
            .copied()
            .filter(|&index| {
                let op = &history[index];
                !(op.is_unknown() && model.is_read_only(&op.input))
            })
            .collect();
        let budget = Budget {
            states_limit: options.max_states_per_partition,
            deadline,
        };
        match search(model, history, &op_indices, budget) {
            SearchOutcome::Linearizable => {}
            SearchOutcome::Illegal(dead_end) => {
                return Ok(CheckResult::Illegal(report_illegal(
                    model,
                    history,
                    &partition.label,
                    op_indices.len(),
                    dead_end,
                )));
            }
            SearchOutcome::OutOfBudget(reason) => {
                if first_unknown.is_none() {
                    first_unknown = Some(CheckResult::Unknown {
                        partition: partition.label.clone(),
                        reason,
                    });
                }
            }
        }
    }
    Ok(first_unknown.unwrap_or(CheckResult::Ok))
}

fn validate_history<I, O>(history: &[Operation<I, O>]) -> Result<(), HistoryError> {
    for (index, op) in history.iter().enumerate() {
        match (&op.output, op.return_time) {
            (Some(_), Some(return_time)) if return_time < op.call => {
                return Err(HistoryError::ReturnBeforeCall {
                    index,
                    call: op.call,
                    return_time,
                });
            }
            (Some(_), None) => {
                return Err(HistoryError::HalfCompleted {
                    index,
                    what: "an output but no return time",
                });
            }
            (None, Some(_)) => {
                return Err(HistoryError::HalfCompleted {
                    index,
                    what: "a return time but no output",
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn validate_partitions(partitions: &[Partition], len: usize) -> Result<(), HistoryError> {
    let mut seen = vec![false; len];
    for partition in partitions {
        for &index in &partition.op_indices {
            let Some(slot) = seen.get_mut(index) else {
                return Err(HistoryError::PartitionIndexOutOfRange {
                    partition: partition.label.clone(),
                    index,
                    len,
                });
            };
            if std::mem::replace(slot, true) {
                return Err(HistoryError::PartitionOverlap {
                    partition: partition.label.clone(),
                    index,
                });
            }
        }
    }
    Ok(())
}

struct Budget {
    states_limit: u64,
    deadline: Option<Instant>,
}

enum SearchOutcome<S> {
    Linearizable,
    Illegal(DeadEnd<S>),
    OutOfBudget(String),
}

/// The deepest point the search reached before getting stuck. Indices are
/// local to the partition.
struct DeadEnd<S> {
    prefix: Vec<usize>,
    blocking_op: usize,
    unplaced: Vec<usize>,
    state: S,
}

/// Marks "no node" in the event list and "no return event" for unknown ops.
const NONE: usize = usize::MAX;

/// The event list as parallel arrays; nodes `0..events` are events in time
/// order, then the head and tail sentinels.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Local op index of each event node.
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    call_node: Vec<usize>,
    /// `NONE` for operations with unknown outcome.
    return_node: Vec<usize>,
    head: usize,
    tail: usize,
}

impl EventList {
    fn new<I, O>(ops: &[&Operation<I, O>]) -> Self {
        // (time, is_return, op): calls sort before returns at equal times so
        // that equal timestamps count as concurrent (lenient, never a false
        // alarm).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (op_index, op) in ops.iter().enumerate() {
            events.push((op.call, false, op_index));
            if let Some(return_time) = op.return_time {
                events.push((return_time, true, op_index));
            }
        }
        events.sort_unstable();

        let event_count = events.len();
        let head = event_count;
        let tail = event_count + 1;
        let mut list = EventList {
            next: vec![NONE; event_count + 2],
            prev: vec![NONE; event_count + 2],
            node_op: Vec::with_capacity(event_count),
            node_is_call: Vec::with_capacity(event_count),
            call_node: vec![NONE; ops.len()],
            return_node: vec![NONE; ops.len()],
            head,
            tail,
        };
        let mut previous = head;
        for (node, &(_, is_return, op_index)) in events.iter().enumerate() {
            list.node_op.push(op_index);
            list.node_is_call.push(!is_return);
            if is_return {
                list.return_node[op_index] = node;
            } else {
                list.call_node[op_index] = node;
            }
            list.next[previous] = node;
            list.prev[node] = previous;
            previous = node;
        }
        list.next[previous] = tail;
        list.prev[tail] = previous;
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Dancing-links restore: valid because nodes come back in the reverse
    /// order they were removed, so their own pointers are still accurate.
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.return_node[op] != NONE {
            self.unlink(self.return_node[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.return_node[op] != NONE {
            self.relink(self.return_node[op]);
        }
        self.relink(self.call_node[op]);
    }
}

/// The set of linearized operations, split in two bitsets: operations with a
/// known outcome and operations with an unknown one, because the cache treats
/// them differently (see [`Cache`]). A Zobrist hash of the known part is kept
/// up to date on every flip so lookups never hash the whole set.
struct Linearized {
    /// Bit position of each op within its own bitset.
    slot: Vec<usize>,
    is_unknown: Vec<bool>,
    known: Vec<u64>,
    unknown: Vec<u64>,
    known_zobrist: u64,
}

impl Linearized {
    fn new(is_unknown: Vec<bool>) -> Self {
        let (mut known_count, mut unknown_count) = (0, 0);
        let slot = is_unknown
            .iter()
            .map(|&unknown| {
                let counter = if unknown {
                    &mut unknown_count
                } else {
                    &mut known_count
                };
                *counter += 1;
                *counter - 1
            })
            .collect();
        Linearized {
            slot,
            is_unknown,
            known: vec![0; known_count.div_ceil(64)],
            unknown: vec![0; unknown_count.div_ceil(64)],
            known_zobrist: 0,
        }
    }

    fn flip(&mut self, op: usize) {
        let slot = self.slot[op];
        if self.is_unknown[op] {
            self.unknown[slot / 64] ^= 1 << (slot % 64);
        } else {
            self.known[slot / 64] ^= 1 << (slot % 64);
            self.known_zobrist ^= splitmix64(slot as u64);
        }
    }
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FxHash-style hasher: the cache hashes a small state millions of times, and
/// SipHash's DoS resistance buys nothing here.
#[derive(Default)]
struct FastHasher {
    hash: u64,
}

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Explored search nodes, bucketed by a hash of (known set, state) as in
/// Porcupine so a lookup clones nothing.
///
/// Beyond Porcupine's exact-match pruning, a node (K, s, U) (K known ops and
/// U unknown ops linearized, state s) is pruned if some (K, s, U') with
/// U' a subset of U was explored: unknown ops may be left out forever, so
/// every completion from (K, s, U) is also one from (K, s, U'), and both
/// have the same candidates' time frontier because unknown ops have no
/// return events. Without this, each pending unknown op doubles the state
/// space and proving a violation takes time exponential in their number.
struct Cache<S> {
    buckets: HashMap<u64, Vec<CacheEntry<S>>, BuildHasherDefault<FastHasher>>,
    entries: u64,
}

struct CacheEntry<S> {
    known: Vec<u64>,
    state: S,
    /// Unknown-op sets explored with this (known, state).
    unknown_sets: Vec<Vec<u64>>,
}

impl<S: Eq + Hash + Clone> Cache<S> {
    /// Records the node; false if it (or a node subsuming it) was explored.
    fn insert(&mut self, linearized: &Linearized, state: &S) -> bool {
        let mut hasher = FastHasher::default();
        state.hash(&mut hasher);
        let key = linearized.known_zobrist ^ splitmix64(hasher.finish());
        let bucket = self.buckets.entry(key).or_default();
        let existing = bucket
            .iter_mut()
            .find(|entry| entry.known == linearized.known && entry.state == *state);
        match existing {
            Some(entry) => {
                if entry
                    .unknown_sets
                    .iter()
                    .any(|explored| is_subset(explored, &linearized.unknown))
                {
                    return false;
                }
                entry.unknown_sets.push(linearized.unknown.clone());
            }
            None => bucket.push(CacheEntry {
                known: linearized.known.clone(),
                state: state.clone(),
                unknown_sets: vec![linearized.unknown.clone()],
            }),
        }
        self.entries += 1;
        true
    }
}

struct Frame<S> {
    op: usize,
    /// The state before `op` was applied, restored when it is undone.
    state_before: S,
}

fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    op_indices: &[usize],
    budget: Budget,
) -> SearchOutcome<M::State> {
    let ops: Vec<&Operation<M::Input, M::Output>> =
        op_indices.iter().map(|&index| &history[index]).collect();
    let mut list = EventList::new(&ops);
    let mut known_remaining = ops.iter().filter(|op| !op.is_unknown()).count();
    let mut linearized = Linearized::new(ops.iter().map(|op| op.is_unknown()).collect());
    let mut cache = Cache {
        buckets: HashMap::default(),
        entries: 0,
    };
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut deepest: Option<DeadEnd<M::State>> = None;
    let mut steps: u64 = 0;

    let mut entry = list.next[list.head];
    // Unknown ops never have to be placed, so the search is done once every
    // op with a known outcome is.
    while known_remaining > 0 {
        steps += 1;
        if steps % DEADLINE_CHECK_INTERVAL_STEPS == 0 {
            if let Some(deadline) = budget.deadline {
                if Instant::now() >= deadline {
                    return SearchOutcome::OutOfBudget(format!(
                        "wall-clock limit reached after {steps} search steps and {} states",
                        cache.entries
                    ));
                }
            }
        }

        // The first return event bounds the candidates: that op must take
        // effect before anything called later. (The tail cannot be reached
        // while a known op is unplaced, since its return event lies ahead,
        // but treating it as the bound keeps the loop total.)
        if entry == list.tail || !list.node_is_call[entry] {
            let deeper = match &deepest {
                Some(dead_end) => stack.len() > dead_end.prefix.len(),
                None => true,
            };
            if deeper {
                deepest = Some(dead_end_at(&list, &stack, entry, &state));
            }
            let Some(frame) = stack.pop() else {
                return match deepest {
                    Some(dead_end) => SearchOutcome::Illegal(translate(dead_end, op_indices)),
                    None => SearchOutcome::OutOfBudget("internal: no dead end recorded".into()),
                };
            };
            state = frame.state_before;
            linearized.flip(frame.op);
            list.unlift(frame.op);
            if !ops[frame.op].is_unknown() {
                known_remaining += 1;
            }
            entry = list.next[list.call_node[frame.op]];
            continue;
        }

        let op_index = list.node_op[entry];
        let op = ops[op_index];
        let next_state = match &op.output {
            Some(output) => model.step(&state, &op.input, output),
            None => model.step_unknown(&state, &op.input),
        };
        if let Some(next_state) = next_state {
            linearized.flip(op_index);
            if cache.insert(&linearized, &next_state) {
                if cache.entries > budget.states_limit {
                    return SearchOutcome::OutOfBudget(format!(
                        "explored the limit of {} states; raise CheckOptions::max_states_per_partition or shorten the history",
                        budget.states_limit
                    ));
                }
                stack.push(Frame {
                    op: op_index,
                    state_before: std::mem::replace(&mut state, next_state),
                });
                list.lift(op_index);
                if !op.is_unknown() {
                    known_remaining -= 1;
                }
                entry = list.next[list.head];
                continue;
            }
            // Already explored from here: undo the tentative flip.
            linearized.flip(op_index);
        }
        entry = list.next[entry];
    }
    SearchOutcome::Linearizable
}

/// Snapshot of a dead end: `entry` is the return event that could not be
/// passed, and every call event before it is an unplaced candidate.
fn dead_end_at<S: Clone>(
    list: &EventList,
    stack: &[Frame<S>],
    entry: usize,
    state: &S,
) -> DeadEnd<S> {
    let mut unplaced = Vec::new();
    let mut node = list.next[list.head];
    while node != entry && node != list.tail {
        if list.node_is_call[node] {
            unplaced.push(list.node_op[node]);
        }
        node = list.next[node];
    }
    let blocking_op = if entry == list.tail {
        NONE
    } else {
        list.node_op[entry]
    };
    DeadEnd {
        prefix: stack.iter().map(|frame| frame.op).collect(),
        blocking_op,
        unplaced,
        state: state.clone(),
    }
}

/// Maps partition-local op numbers back to history indices.
fn translate<S>(dead_end: DeadEnd<S>, op_indices: &[usize]) -> DeadEnd<S> {
    let map = |local: usize| op_indices.get(local).copied().unwrap_or(NONE);
    DeadEnd {
        prefix: dead_end.prefix.into_iter().map(map).collect(),
        blocking_op: map(dead_end.blocking_op),
        unplaced: dead_end.unplaced.into_iter().map(map).collect(),
        state: dead_end.state,
    }
}

fn describe_op<I: std::fmt::Debug, O: std::fmt::Debug>(
    index: usize,
    op: &Operation<I, O>,
) -> String {
    match (&op.output, op.return_time) {
        (Some(output), Some(return_time)) => format!(
            "#{index} client {} [{}..{}] {:?} -> {:?}",
            op.client_id, op.call, return_time, op.input, output
        ),
        _ => format!(
            "#{index} client {} [{}..?] {:?} -> outcome unknown",
            op.client_id, op.call, op.input
        ),
    }
}

fn report_illegal<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partition: &str,
    op_count: usize,
    dead_end: DeadEnd<M::State>,
) -> IllegalReport {
    let mut detail = String::new();
    // write! to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        detail,
        "not linearizable: in partition {partition} ({op_count} operations) no order respects both real time and the model."
    );
    let prefix = &dead_end.prefix;
    let _ = writeln!(
        detail,
        "Longest linearizable prefix found: {} operations{}",
        prefix.len(),
        if prefix.len() > REPORT_OPS_MAX {
            format!(" (the first {} omitted)", prefix.len() - REPORT_OPS_MAX)
        } else {
            String::new()
        }
    );
    let shown_from = prefix.len().saturating_sub(REPORT_OPS_MAX);
    for (position, &index) in prefix.iter().enumerate().skip(shown_from) {
        if let Some(op) = history.get(index) {
            let _ = writeln!(detail, "  {:>4}. {}", position + 1, describe_op(index, op));
        }
    }
    let _ = writeln!(
        detail,
        "State after that prefix: {}",
        model.describe_state(&dead_end.state)
    );
    match history.get(dead_end.blocking_op) {
        Some(op) => {
            let _ = writeln!(
                detail,
                "Then {} had to take effect before it returned, but none of the {} pending operations can be placed next:",
                describe_op(dead_end.blocking_op, op),
                dead_end.unplaced.len()
            );
        }
        None => {
            let _ = writeln!(detail, "No pending operation can be placed next:");
        }
    }
    for &index in dead_end.unplaced.iter().take(REPORT_OPS_MAX) {
        let Some(op) = history.get(index) else {
            continue;
        };
        let fits = match &op.output {
            Some(output) => model.step(&dead_end.state, &op.input, output).is_some(),
            None => model.step_unknown(&dead_end.state, &op.input).is_some(),
        };
        let why = if fits {
            "fits this state, but every order that places it here fails later"
        } else {
            "impossible from this state"
        };
        let _ = writeln!(detail, "  {}: {why}", describe_op(index, op));
    }
    if dead_end.unplaced.len() > REPORT_OPS_MAX {
        let _ = writeln!(
            detail,
            "  ... and {} more",
            dead_end.unplaced.len() - REPORT_OPS_MAX
        );
    }
    IllegalReport {
        partition: partition.to_string(),
        detail,
        longest_prefix: dead_end.prefix,
        blocking_op: dead_end.blocking_op,
        unplaced_ops: dead_end.unplaced,
    }
}
