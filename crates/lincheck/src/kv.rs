//! [`KvModel`]: RaftKV's client API as a sequential specification, checked
//! one key at a time.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{Model, Operation, Partition};

/// A request to the store. Keys and values are raw bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Overwrite a key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove a key (succeeds whether or not it exists).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Append to the current value; an absent key counts as empty.
    Append {
        /// The key.
        key: Vec<u8>,
        /// Bytes to append.
        value: Vec<u8>,
    },
    /// Set `key` to `new` if its value equals `expected`.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The required current value; `None` requires the key to be absent.
        expected: Option<Vec<u8>>,
        /// The value to install.
        new: Vec<u8>,
    },
}

impl KvInput {
    /// The key the request touches.
    pub fn key(&self) -> &[u8] {
        match self {
            KvInput::Get { key }
            | KvInput::Put { key, .. }
            | KvInput::Delete { key }
            | KvInput::Append { key, .. }
            | KvInput::Cas { key, .. } => key,
        }
    }
}

/// A reply from the store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The value read, `None` if absent.
    Get(Option<Vec<u8>>),
    /// Put done.
    Put,
    /// Delete done.
    Delete,
    /// Append done.
    Append,
    /// Whether the swap happened.
    Cas(bool),
}

/// The state of one key: its value, `None` if absent.
pub type KeyState = Option<Vec<u8>>;

/// Applies `input` to a key holding `state`: the sequential specification
/// every concurrent history is compared against. Public so that generators
/// and simulators can use the same reference implementation.
pub fn apply(state: &KeyState, input: &KvInput) -> (KeyState, KvOutput) {
    match input {
        KvInput::Get { .. } => (state.clone(), KvOutput::Get(state.clone())),
        KvInput::Put { value, .. } => (Some(value.clone()), KvOutput::Put),
        KvInput::Delete { .. } => (None, KvOutput::Delete),
        KvInput::Append { value, .. } => {
            let mut appended = state.clone().unwrap_or_default();
            appended.extend_from_slice(value);
            (Some(appended), KvOutput::Append)
        }
        KvInput::Cas { expected, new, .. } => {
            if state == expected {
                (Some(new.clone()), KvOutput::Cas(true))
            } else {
                (state.clone(), KvOutput::Cas(false))
            }
        }
    }
}

/// Linearizable key-value store with per-key partitioning. All keys start
/// absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvModel;

impl Model for KvModel {
    type State = KeyState;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> KeyState {
        None
    }

    fn step(&self, state: &KeyState, input: &KvInput, output: &KvOutput) -> Option<KeyState> {
        let (next, expected_output) = apply(state, input);
        (expected_output == *output).then_some(next)
    }

    fn step_unknown(&self, state: &KeyState, input: &KvInput) -> Option<KeyState> {
        Some(apply(state, input).0)
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }

    fn partition(&self, history: &[Operation<KvInput, KvOutput>]) -> Vec<Partition> {
        // BTreeMap: a deterministic partition order makes reports stable.
        let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        for (index, op) in history.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(index);
        }
        by_key
            .into_iter()
            .map(|(key, op_indices)| Partition {
                label: format!("key {:?}", Bytes(key)),
                op_indices,
            })
            .collect()
    }

    fn describe_state(&self, state: &KeyState) -> String {
        match state {
            Some(value) => format!("value {:?}", Bytes(value)),
            None => "absent".to_string(),
        }
    }
}

/// Shows bytes as an escaped string, which reads far better in reports than
/// a list of numbers.
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

struct OptionalBytes<'a>(&'a Option<Vec<u8>>);

impl fmt::Debug for OptionalBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "Some({:?})", Bytes(value)),
            None => write!(f, "None"),
        }
    }
}

impl fmt::Debug for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Get { key } => write!(f, "Get({:?})", Bytes(key)),
            KvInput::Put { key, value } => write!(f, "Put({:?}, {:?})", Bytes(key), Bytes(value)),
            KvInput::Delete { key } => write!(f, "Delete({:?})", Bytes(key)),
            KvInput::Append { key, value } => {
                write!(f, "Append({:?}, {:?})", Bytes(key), Bytes(value))
            }
            KvInput::Cas { key, expected, new } => write!(
                f,
                "Cas({:?}, expected {:?}, new {:?})",
                Bytes(key),
                OptionalBytes(expected),
                Bytes(new)
            ),
        }
    }
}

impl fmt::Debug for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Get(value) => write!(f, "{:?}", OptionalBytes(value)),
            KvOutput::Put => write!(f, "ok"),
            KvOutput::Delete => write!(f, "ok"),
            KvOutput::Append => write!(f, "ok"),
            KvOutput::Cas(swapped) => {
                write!(f, "{}", if *swapped { "swapped" } else { "not swapped" })
            }
        }
    }
}
