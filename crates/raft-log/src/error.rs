//! The error type of the log engine.

use std::io;
use std::path::{Path, PathBuf};

use crate::GroupId;

/// Everything that can go wrong in the log engine. Every message says what was wrong and,
/// where there is one, what the operator or caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the data directory does not hold what the engine wrote. Recovery refuses to
    /// start rather than silently dropping acknowledged writes.
    #[error(
        "corrupt file {file} at byte offset {offset}: {reason}; the data directory is damaged: \
         rebuild this store from its replicas, or reopen with \
         RecoveryMode::TolerateAnyCorruption to salvage what is readable (acknowledged writes \
         may be lost)"
    )]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first damaged record (or header) in `file`.
        offset: u64,
        /// What exactly failed to check out.
        reason: String,
    },

    /// The operating system refused an operation.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// Which operation failed (`"open"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory it was done on.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The disk (or quota) is full (`ENOSPC`, `EDQUOT`). Not fatal where it comes from a
    /// write, a segment's creation or preallocation: nothing partial is kept and the write
    /// can be retried once space is freed (see `Config::no_space_retry`).
    #[error("no space left on device during {op} on {path}: free disk space; writes resume by themselves once there is room")]
    Full {
        /// Which operation failed.
        op: &'static str,
        /// The file it was done on.
        path: PathBuf,
    },

    /// Another `LogEngine` (in this process or another one) holds the directory's LOCK file.
    #[error(
        "data directory {path} is already in use by another open log engine (in this or another \
         process); close that one first, or use a different directory"
    )]
    DirectoryLocked {
        /// The LOCK file that is held.
        path: PathBuf,
    },

    /// The caller asked for something that would break the log's invariants (a gap in a
    /// group's entries, non-contiguous entries, ...). Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A batch is larger than one record may be.
    #[error("batch encodes to {size_bytes} bytes, more than the limit of {limit_bytes} bytes; split it into smaller batches")]
    BatchTooLarge {
        /// Encoded size of the batch.
        size_bytes: u64,
        /// `MAX_RECORD_PAYLOAD_BYTES`.
        limit_bytes: u64,
    },

    /// The requested entries were compacted away.
    #[error(
        "entry {index} of group {group} was compacted (first available index: {first_index:?})"
    )]
    Compacted {
        /// The group asked for.
        group: GroupId,
        /// The index asked for.
        index: u64,
        /// The first index still held, if any.
        first_index: Option<u64>,
    },

    /// The requested entries were never written (or were truncated).
    #[error("entry {index} of group {group} is not in the log (last index: {last_index:?})")]
    Unavailable {
        /// The group asked for.
        group: GroupId,
        /// The index asked for.
        index: u64,
        /// The last index held, if any.
        last_index: Option<u64>,
    },

    /// An earlier write or fdatasync failed, so what is on disk is unknown (after a failed
    /// fsync the kernel may have dropped dirty pages). The engine refuses further writes.
    #[error("log engine refuses writes after an earlier I/O failure ({cause}); close and reopen the engine, which recovers from what is on disk")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
}

impl Error {
    /// Wraps an `io::Error`, recognising a full disk.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Error {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return Error::Full {
                op,
                path: path.to_path_buf(),
            };
        }
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this is a full disk ([`Error::Full`]).
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Full { .. })
    }

    pub(crate) fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy of this error for a second waiter of the same failed group commit
    /// (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::Full { op, path } => Error::Full {
                op,
                path: path.clone(),
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::DirectoryLocked { path } => Error::DirectoryLocked { path: path.clone() },
            Error::InvalidArgument(message) => Error::InvalidArgument(message.clone()),
            Error::BatchTooLarge {
                size_bytes,
                limit_bytes,
            } => Error::BatchTooLarge {
                size_bytes: *size_bytes,
                limit_bytes: *limit_bytes,
            },
            Error::Compacted {
                group,
                index,
                first_index,
            } => Error::Compacted {
                group: *group,
                index: *index,
                first_index: *first_index,
            },
            Error::Unavailable {
                group,
                index,
                last_index,
            } => Error::Unavailable {
                group: *group,
                index: *index,
                last_index: *last_index,
            },
            Error::Poisoned { cause } => Error::Poisoned {
                cause: cause.clone(),
            },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
