//! Discovery against the real kernel: cgroup v2 directories laid out as Docker's runc makes
//! them (`/docker/<id>` in the unified hierarchy) appear in the agent's snapshot as Docker
//! containers within a tick or two, disappear after rmdir, and are never changed by berth.
//! No dockerd runs: the kernel's cgroup tree is what discovery reads.

mod common;

use std::{
    fs,
    os::unix::fs::MetadataExt,
    process::{Child, Command},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{Agent, Cgroup, cgroup2_mount, wait_for};

/// The tests share `/docker` in the unified hierarchy: one at a time, so the one that made it
/// removes it.
static DOCKER_PARENT: Mutex<()> = Mutex::new(());

/// A Docker-style id no other test or run uses: 64 lowercase hex characters.
fn unique_id(n: u32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:08x}{:08x}{nanos:048x}", std::process::id(), n)
}

/// A process parked in `cgroup` (killed and reaped on drop).
struct Parked(Child);

impl Parked {
    fn start(cgroup: &Cgroup) -> Self {
        let child = Command::new("sleep").arg("300").spawn().unwrap();
        fs::write(cgroup.dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        Parked(child)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The containers `/api/v1/containers?all=true` lists.
fn containers(agent: &Agent) -> Vec<serde_json::Value> {
    let (status, body) = agent.get("/api/v1/containers?all=true");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn find(agent: &Agent, id: &str) -> Option<serde_json::Value> {
    containers(agent).into_iter().find(|c| c["id"] == id)
}

#[test]
fn docker_cgroups_appear_as_docker_containers_and_are_never_changed() {
    let _one = DOCKER_PARENT.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start();
    let mount = cgroup2_mount();
    let parent = mount.join("docker");
    let made_parent = !parent.exists();
    let (running_id, idle_id) = (unique_id(1), unique_id(2));
    let running = Cgroup::create(&parent, &running_id);
    let idle = Cgroup::create(&parent, &idle_id);
    let parked = Parked::start(&running);

    let c = wait_for(
        Duration::from_secs(5),
        "the docker cgroup to be listed",
        || find(&agent, &running_id),
    );
    assert_eq!(c["engine"], "docker");
    assert_eq!(
        c["name"],
        &running_id[..12],
        "short id until metadata lands"
    );
    assert_eq!(c["cgroup"], format!("/docker/{running_id}"));
    assert_eq!(
        c["cgroup_id"].as_u64(),
        Some(fs::metadata(&running.dir).unwrap().ino())
    );
    assert_eq!(c["status"], "running", "{c}");
    assert!(c.get("runtime").is_none(), "no berth record: {c}");
    let i = find(&agent, &idle_id).expect("the empty docker cgroup is listed too");
    assert_eq!(
        (&i["engine"], &i["status"]),
        (&"docker".into(), &"exited".into())
    );

    // `berth ps` lists it (running); `berth stop` refuses it, naming its engine.
    let ps = agent.ok(&["ps"]);
    assert!(ps.contains(&running_id[..12]), "{ps}");
    for verb in [
        vec!["stop", running_id.as_str()],
        vec!["kill", &running_id[..12]],
        vec!["rm", "-f", idle_id.as_str()],
    ] {
        let (code, out, err) = agent.cli(&verb);
        assert_ne!(code, 0, "berth {verb:?} succeeded: {out}");
        assert!(
            err.contains("is managed by docker; berth does not change containers it did not start"),
            "berth {verb:?}: {err}"
        );
    }
    assert!(
        running.dir.exists() && idle.dir.exists(),
        "berth removed a cgroup"
    );
    assert!(
        fs::read_to_string(running.dir.join("cgroup.procs"))
            .unwrap()
            .contains(&parked.0.id().to_string()),
        "berth stopped the process"
    );

    // Its process ends: exited at the next walks (the kernel marks cgroup.events changed),
    // and running again when a process joins.
    drop(parked);
    let status = |want: &'static str| {
        wait_for(
            Duration::from_secs(5),
            &format!("the container {want}"),
            || find(&agent, &running_id).filter(|c| c["status"] == want),
        )
    };
    status("exited");
    let parked = Parked::start(&running);
    status("running");

    // Gone within a tick or two of rmdir.
    drop(parked);
    drop(running);
    drop(idle);
    wait_for(
        Duration::from_secs(5),
        "removed cgroups to disappear",
        || {
            let list = containers(&agent);
            (!list
                .iter()
                .any(|c| c["id"] == running_id || c["id"] == idle_id))
            .then_some(())
        },
    );
    if made_parent {
        let _ = fs::remove_dir(&parent);
    }
}

#[test]
fn two_hundred_docker_cgroups_are_listed_and_none_stays_after_removal() {
    let _one = DOCKER_PARENT.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start();
    let parent = cgroup2_mount().join("docker");
    let made_parent = !parent.exists();
    let ids: Vec<String> = (0..200).map(|n| unique_id(1000 + n)).collect();
    let cgroups: Vec<Cgroup> = ids.iter().map(|id| Cgroup::create(&parent, id)).collect();
    // Only this test's ids: the host may hold other Docker cgroups (a dockerd of another test).
    let ours = |agent: &Agent| {
        containers(agent)
            .iter()
            .filter(|c| c["engine"] == "docker" && ids.iter().any(|id| c["id"] == id.as_str()))
            .count()
    };
    wait_for(
        Duration::from_secs(10),
        "200 docker cgroups to be listed",
        || (ours(&agent) == 200).then_some(()),
    );
    // What a tick costs is measured by `cargo xtask bench agent`, not asserted here.
    drop(cgroups);
    wait_for(
        Duration::from_secs(10),
        "the 200 docker cgroups to be gone",
        || (ours(&agent) == 0).then_some(()),
    );
    if made_parent {
        let _ = fs::remove_dir(&parent);
    }
}
