//! [`RegisterModel`]: a single `u64` read/write register, the smallest model
//! worth checking (e.g. one Raft-replicated register in the Raft simulator).

use crate::model::Model;

/// A register request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Overwrite the value.
    Write(u64),
}

/// A register reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// The value read.
    Read(u64),
    /// Write done.
    Write,
}

/// A linearizable register holding `initial` before the first write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterModel {
    /// The value before any write.
    pub initial: u64,
}

impl Model for RegisterModel {
    type State = u64;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> u64 {
        self.initial
    }

    fn step(&self, state: &u64, input: &RegisterInput, output: &RegisterOutput) -> Option<u64> {
        match (input, output) {
            (RegisterInput::Read, RegisterOutput::Read(value)) => {
                (value == state).then_some(*state)
            }
            (RegisterInput::Write(value), RegisterOutput::Write) => Some(*value),
            // A reply of the wrong kind can never be produced.
            _ => None,
        }
    }

    fn step_unknown(&self, state: &u64, input: &RegisterInput) -> Option<u64> {
        match input {
            RegisterInput::Read => Some(*state),
            RegisterInput::Write(value) => Some(*value),
        }
    }

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Read)
    }
}
