//! [`RuntimeError`]: everything a lifecycle verb can fail with, each variant naming what it is
//! about, and which side is to blame ([`RuntimeError::is_client_error`]), so the API answers
//! 4xx for the caller's mistakes and 5xx for the host's.

use std::path::{Path, PathBuf};

use super::store::{RestartPolicyError, StoreError};
use crate::{
    cgroup::{CgroupError, limits::LimitError},
    image::ImageError,
    net::{NetError, NetworkMode, portmap::Proto},
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    // The caller's mistakes (4xx).
    #[error("no such container: {reference}")]
    NotFound { reference: String },
    #[error("{reference} matches {matches} containers: give more of the id")]
    AmbiguousReference { reference: String, matches: usize },
    #[error("the name {name} is already used by container {id}")]
    NameInUse { name: String, id: String },
    #[error(
        "invalid container name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 characters"
    )]
    InvalidName { name: String },
    #[error("container {container} is running: stop it first, or use force")]
    Running { container: String },
    #[error("container {container} is not running")]
    NotRunning { container: String },
    #[error("no image or rootfs directory given")]
    NoImage,
    #[error("rootfs {path}: not a directory")]
    RootfsNotDirectory { path: PathBuf },
    #[error("{image} has no default command: give one after it")]
    NoCommand { image: String },
    #[error("-e {entry}: expected KEY=VALUE")]
    InvalidEnv { entry: String },
    #[error("-w {workdir}: the working directory must be absolute")]
    RelativeWorkdir { workdir: String },
    #[error(
        "--security-opt {value}: expected seccomp=unconfined, seccomp=builtin or \
         seccomp=<a profile's JSON> (`berth run` reads a profile file and sends its content)"
    )]
    SecurityOpt { value: String },
    #[error("--security-opt {0}")]
    Seccomp(#[from] super::seccomp::SeccompError),
    #[error("--user {user}: no user `{name}` in the image's /etc/passwd")]
    UnknownUser { user: String, name: String },
    #[error("--user {user}: no group `{group}` in the image's /etc/group")]
    UnknownGroup { user: String, group: String },
    #[error(transparent)]
    RestartPolicy(#[from] RestartPolicyError),
    #[error("-p needs --network bridge: {}", publish_hint(*mode))]
    PublishNeedsBridge { mode: NetworkMode },
    #[error("host port {port}/{proto} is already in use by a process on this host")]
    PortInUse { port: u16, proto: Proto },
    #[error("unknown signal {signal}: use a name (KILL, TERM, HUP, ...) or a number from 1 to 64")]
    UnknownSignal { signal: String },
    #[error("image {image} is used by container {container}: remove the container first")]
    ImageInUse { image: String, container: String },
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error("the container did not start: {reason}")]
    StartFailed { container: String, reason: String },
    #[error(
        "--rm and --restart {policy} cannot be combined: --rm removes the container when it \
         exits, a restart policy starts it again"
    )]
    RemoveWithRestart { policy: String },

    // The host's failures (5xx), unless the wrapped error says otherwise.
    #[error("applying limits to container {container}: {source}")]
    ApplyLimits {
        container: String,
        source: Box<CgroupError>,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
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
    /// The shim could not be started (berth's own binary), or its container's runtime state
    /// cannot be acted on without it.
    #[error("shim of container {container}: {reason}")]
    Shim { container: String, reason: String },
}

fn publish_hint(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Host => {
            "a host-network container uses the host's ports directly and has none to publish"
        }
        NetworkMode::None | NetworkMode::Bridge => {
            "a --network none container has no ports to publish"
        }
    }
}

impl RuntimeError {
    /// Whether the error is the client's (4xx) rather than the host's (5xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            RuntimeError::NotFound { .. }
            | RuntimeError::AmbiguousReference { .. }
            | RuntimeError::NameInUse { .. }
            | RuntimeError::InvalidName { .. }
            | RuntimeError::Running { .. }
            | RuntimeError::NotRunning { .. }
            | RuntimeError::NoImage
            | RuntimeError::RootfsNotDirectory { .. }
            | RuntimeError::NoCommand { .. }
            | RuntimeError::InvalidEnv { .. }
            | RuntimeError::RelativeWorkdir { .. }
            | RuntimeError::SecurityOpt { .. }
            | RuntimeError::Seccomp(_)
            | RuntimeError::UnknownUser { .. }
            | RuntimeError::UnknownGroup { .. }
            | RuntimeError::RestartPolicy(_)
            | RuntimeError::PublishNeedsBridge { .. }
            | RuntimeError::PortInUse { .. }
            | RuntimeError::UnknownSignal { .. }
            | RuntimeError::ImageInUse { .. }
            | RuntimeError::Limits(_)
            | RuntimeError::StartFailed { .. }
            | RuntimeError::RemoveWithRestart { .. } => true,
            RuntimeError::Net(e) => e.is_client_error(),
            RuntimeError::Image(e) => e.is_client_error(),
            RuntimeError::ApplyLimits { .. }
            | RuntimeError::Store(_)
            | RuntimeError::Cgroup(_)
            | RuntimeError::Io { .. }
            | RuntimeError::Spec { .. }
            | RuntimeError::Runtime { .. }
            | RuntimeError::RuntimeUnusable { .. }
            | RuntimeError::Shim { .. } => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_4xx_and_host_failures_5xx() {
        let client = [
            RuntimeError::InvalidName { name: "a b".into() },
            RuntimeError::AmbiguousReference {
                reference: "ab".into(),
                matches: 2,
            },
            RuntimeError::UnknownSignal {
                signal: "NOPE".into(),
            },
            RuntimeError::SecurityOpt {
                value: "apparmor=x".into(),
            },
            RuntimeError::NotRunning {
                container: "web".into(),
            },
            RuntimeError::PortInUse {
                port: 8080,
                proto: Proto::Tcp,
            },
            RuntimeError::ImageInUse {
                image: "alpine".into(),
                container: "web".into(),
            },
        ];
        for e in &client {
            assert!(e.is_client_error(), "{e}");
        }
        let host = [
            RuntimeError::ApplyLimits {
                container: "web".into(),
                source: Box::new(CgroupError::NoCgroup2),
            },
            RuntimeError::Net(NetError::NetlinkThread { netns: None }),
            RuntimeError::Net(NetError::LinkMissing {
                link: "eth0".into(),
                netns: Some("/run/berth/netns/x".into()),
            }),
            RuntimeError::Io {
                op: "create",
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
            RuntimeError::Shim {
                container: "web".into(),
                reason: "starting the shim: No such file or directory".into(),
            },
        ];
        for e in &host {
            assert!(!e.is_client_error(), "{e}");
        }
    }

    #[test]
    fn messages_name_what_they_are_about() {
        let e = RuntimeError::PortInUse {
            port: 8080,
            proto: Proto::Udp,
        };
        assert_eq!(
            e.to_string(),
            "host port 8080/udp is already in use by a process on this host"
        );
        let e = RuntimeError::PublishNeedsBridge {
            mode: NetworkMode::Host,
        };
        assert!(
            e.to_string().starts_with("-p needs --network bridge: "),
            "{e}"
        );
        let e = RuntimeError::ApplyLimits {
            container: "web".into(),
            source: Box::new(CgroupError::NoCgroup2),
        };
        assert!(
            e.to_string()
                .starts_with("applying limits to container web: "),
            "{e}"
        );
    }
}
