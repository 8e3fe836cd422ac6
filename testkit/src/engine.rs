//! What the engine guards ([`Containerd`](crate::Containerd), [`Podman`](crate::Podman)) share:
//! a scratch directory, a process in namespaces of its own, tools run inside them, and the
//! cleanup of what an engine leaves on the host (processes that outlive it, cgroups in every
//! hierarchy).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::ShError;

/// Whether `tool` is an executable in `PATH` (or the sbin directories root has).
pub fn which(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|d| Path::new(d).join(tool).is_file())
}

/// A new directory below the temp dir, named after `tag` and unique to the call.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique(&format!("berth-{tag}-")));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Runs `sh -c SCRIPT` in a new mount namespace (private propagation, a tmpfs of its own on
/// `/run`) and a new network namespace, stdout and stderr to `log`. `SCRIPT` should `exec` the
/// long-lived program, which then has the returned child's pid.
pub fn spawn_isolated(script: &str, log: fs::File) -> Child {
    let out = log.try_clone().expect("duplicating the log file");
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "-n", "sh", "-c"])
        .arg(format!("mount -t tmpfs berth-test /run && {script}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("unshare (util-linux) did not start: {e}"))
}

/// `tool ARGS...` inside the mount and network namespaces of process `pid`: stdout, or the
/// failure with its stderr.
pub fn run_in(pid: u32, tool: &str, args: &[&str]) -> Result<String, ShError> {
    let command = format!("{tool} {}", args.join(" "));
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-n", "--", tool])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ShError {
            command: command.clone(),
            status: None,
            stderr: format!("nsenter (util-linux): {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ShError {
            command,
            status: Some(out.status),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// SIGTERM, then SIGKILL after 10 s; reaped.
pub fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to every process whose command line names a path below `dir` (an engine's monitors
/// and shims, which outlive the engine: they carry its socket or state path), by pid.
pub fn kill_naming(dir: &Path) {
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let needle = needle.as_slice();
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: a signal to a process started for this guard, found by its arguments.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Mount points of every cgroup hierarchy (v1 controllers and the v2 / unified one).
fn hierarchies() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f.get(2), Some(&"cgroup") | Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Removes each cgroup `path` (below a hierarchy's mount, e.g. `/kubepods/burstable/pod1/ID`)
/// in every hierarchy, killing what still runs in it, then its parents up to the top while they
/// are empty (a parent another test still uses stays).
pub fn remove_cgroups(paths: &[String]) {
    remove(paths, true);
}

/// Like [`remove_cgroups`] for cgroups shared with other users of an engine (podman's
/// `conmon`): removed only when empty, nothing in them is killed.
pub fn remove_empty_cgroups(paths: &[String]) {
    remove(paths, false);
}

fn remove(paths: &[String], kill: bool) {
    for mount in hierarchies() {
        for path in paths {
            let rel = path.trim_matches('/');
            if rel.is_empty() {
                continue;
            }
            let leaf = mount.join(rel);
            if kill && leaf.is_dir() {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Ok(procs) = fs::read_to_string(leaf.join("cgroup.procs")) {
                        for pid in procs
                            .split_whitespace()
                            .filter_map(|p| p.parse::<i32>().ok())
                        {
                            // SAFETY: a process in a cgroup the guard's engine made for a test
                            // container.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    if fs::remove_dir(&leaf).is_ok() || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            } else {
                let _ = fs::remove_dir(&leaf);
            }
            let mut parent = leaf.parent();
            while let Some(p) = parent.filter(|p| *p != mount) {
                match fs::remove_dir(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => break,
                    _ => parent = p.parent(),
                }
            }
        }
    }
}
