//! [`RuntimeError`]: everything a lifecycle verb can fail with, and which side is to blame
//! ([`RuntimeError::is_client_error`]), so the API answers 4xx for the caller's mistakes and
//! 5xx for the host's.

use std::path::{Path, PathBuf};

use crate::{cgroup::limits::LimitError, image::ImageError, net::NetError};

use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no such container: {reference}")]
    NotFound { reference: String },
    #[error("the name {name} is already used by container {id}")]
    NameInUse { name: String, id: String },
    #[error("container {container} is running: stop it first, or use force")]
    Running { container: String },
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building the OCI spec ({what}): {reason}")]
    Spec { what: &'static str, reason: String },
    #[error("{runtime} {command} failed: {stderr}")]
    Runtime {
        runtime: String,
        command: &'static str,
        container: String,
        stderr: String,
    },
    #[error("OCI runtime {runtime} cannot be used: {reason}")]
    RuntimeUnusable { runtime: String, reason: String },
    #[error("the container did not start: {reason}")]
    StartFailed { container: String, reason: String },
}

impl RuntimeError {
    /// Whether the error is the client's (4xx) rather than the host's (5xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            RuntimeError::NotFound { .. }
            | RuntimeError::NameInUse { .. }
            | RuntimeError::Running { .. }
            | RuntimeError::BadInput(_)
            | RuntimeError::Limits(_)
            | RuntimeError::StartFailed { .. } => true,
            RuntimeError::Net(NetError::BadInput(_) | NetError::Exhausted { .. }) => true,
            RuntimeError::Net(NetError::Portmap(e)) => e.is_client_error(),
            RuntimeError::Image(e) => e.is_client_error(),
            _ => false,
        }
    }
}

/// Maps an I/O error to [`RuntimeError::Io`] naming the operation and the path.
pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}
