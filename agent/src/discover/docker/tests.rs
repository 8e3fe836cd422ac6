use std::{collections::BTreeMap, fs};

use super::*;
use crate::config::HumanDuration;

const ID: &str = "6405ad6793eac41604bf8906fc2540ba4ba68cc4b2eb970671f8a6e8ce93d779";

/// A data root holding the `media` fixture as container `ID`.
fn data_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("containers").join(ID);
    fs::create_dir_all(&dir).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/discover/docker/fixtures/media");
    for f in ["config.v2.json", "hostconfig.json"] {
        fs::copy(fixtures.join(f), dir.join(f)).unwrap();
    }
    root
}

/// What the task does every `DISK_RECHECK`: forgets the entries no lookup asked about for
/// `FORGET`, and marks stale those inotify does not watch whose files' mtimes changed.
fn recheck_disk(cache: &Mutex<Cache>, containers: &Path) {
    let unwatched = lock(cache).disk.prune(FORGET);
    recheck_stamps(cache, containers, &unwatched);
}

fn ask(s: &mut DockerSource, engine: Engine, id: &str) -> Option<Meta> {
    s.lookup(engine, id, &BTreeMap::new())
}

#[test]
fn files_are_read_once_per_new_id_and_only_for_docker_ids() {
    let root = data_root();
    let mut s = DockerSource::files_only(root.path());
    assert_eq!(ask(&mut s, Engine::Podman, ID), None, "another engine's id");
    let m = ask(&mut s, Engine::Docker, ID).expect("metadata from the files");
    assert_eq!(m.name.as_deref(), Some("media"));
    // Cached: gone files change nothing until a recheck.
    fs::remove_dir_all(root.path().join("containers").join(ID)).unwrap();
    assert_eq!(ask(&mut s, Engine::Docker, ID), Some(m));
    // Not an id: never a path.
    assert_eq!(ask(&mut s, Engine::Docker, "../../etc"), None);
    // An id without files is remembered as unknown.
    let other = "a".repeat(64);
    assert_eq!(ask(&mut s, Engine::Docker, &other), None);
    assert!(lock(&s.cache).disk.entries.contains_key(&other));
}

#[test]
fn without_inotify_a_recheck_rereads_changed_files_and_forgets_ids_no_longer_asked_about() {
    let root = data_root();
    let mut s = DockerSource::files_only(root.path());
    lock(&s.cache).disk = Disk::without_inotify();
    let containers = root.path().join("containers");
    assert!(ask(&mut s, Engine::Docker, ID).is_some());
    let other = "b".repeat(64);
    assert_eq!(ask(&mut s, Engine::Docker, &other), None);

    // A rename rewrites config.v2.json (a new mtime).
    let config = containers.join(ID).join("config.v2.json");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"/media\"", "\"/media2\"");
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&config, text).unwrap();
    s.refresh();
    assert_eq!(
        ask(&mut s, Engine::Docker, ID).and_then(|m| m.name),
        Some("media".into()),
        "nothing watched: seen at the recheck"
    );
    recheck_disk(&s.cache, &containers);
    assert_eq!(
        ask(&mut s, Engine::Docker, ID).and_then(|m| m.name),
        Some("media2".into())
    );

    // `other` was not asked about for longer than FORGET: dropped at the next recheck; ID,
    // asked just now, stays.
    lock(&s.cache).disk.entries.get_mut(&other).unwrap().asked -= FORGET;
    recheck_disk(&s.cache, &containers);
    let c = lock(&s.cache);
    assert!(c.disk.entries.contains_key(ID) && !c.disk.entries.contains_key(&other));
}

#[test]
fn only_the_api_answers_while_it_is_up() {
    let root = data_root();
    let mut s = DockerSource::files_only(root.path());
    let api = Meta {
        name: Some("from-api".into()),
        ..Meta::default()
    };
    lock(&s.cache).api.insert(ID.to_owned(), api.clone());
    assert_eq!(
        ask(&mut s, Engine::Docker, ID).and_then(|m| m.name),
        Some("media".into()),
        "API down: the files"
    );
    lock(&s.cache).api_up = true;
    assert_eq!(ask(&mut s, Engine::Docker, ID), Some(api));
    // An id the API has not described yet: nothing (its files may be half-written), and no read.
    let other = "c".repeat(64);
    assert_eq!(ask(&mut s, Engine::Docker, &other), None);
    assert!(!lock(&s.cache).disk.entries.contains_key(&other));
}

/// Replaces `file` in container `ID`'s directory as dockerd does (ioutils.AtomicWriteFile):
/// a temporary file in the same directory, renamed over it.
fn replace(root: &Path, file: &str, from: &str, to: &str) {
    let dir = root.join("containers").join(ID);
    let text = fs::read_to_string(dir.join(file))
        .unwrap()
        .replace(from, to);
    let tmp = dir.join(format!(".tmp-{file}{}", std::process::id()));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(file)).unwrap();
}

fn counts(s: &DockerSource) -> (u64, u64) {
    let c = lock(&s.cache);
    (c.disk.reads, c.disk.stats)
}

#[test]
fn a_config_renamed_in_is_seen_at_the_next_lookup_and_unchanged_files_are_not_read_again() {
    let root = data_root();
    let containers = root.path().join("containers");
    let mut s = DockerSource::files_only(root.path());
    let name = |s: &mut DockerSource| ask(s, Engine::Docker, ID).and_then(|m| m.name);
    assert_eq!(name(&mut s), Some("media".into()));
    assert_eq!(counts(&s), (1, 0), "one read, no stat");
    // The container's directory and `containers` are watched.
    assert_eq!(lock(&s.cache).disk.watches(), 2);

    // Nothing changed, or only files berth does not read (the log, dockerd's temporary files):
    // nothing read again.
    for _ in 0..3 {
        s.refresh();
        assert_eq!(name(&mut s), Some("media".into()));
    }
    let dir = containers.join(ID);
    fs::write(dir.join(format!("{ID}-json.log")), "{\"log\":\"hi\\n\"}\n").unwrap();
    fs::write(dir.join("hostname"), "media\n").unwrap();
    s.refresh();
    assert_eq!(name(&mut s), Some("media".into()));
    assert_eq!(counts(&s), (1, 0), "unchanged files are not read again");

    // `docker rename`: config.v2.json replaced by rename; seen at the next tick's lookup,
    // whatever the time since the last.
    replace(root.path(), "config.v2.json", "\"/media\"", "\"/media2\"");
    s.refresh();
    assert_eq!(name(&mut s), Some("media2".into()));
    assert_eq!(counts(&s), (2, 0));
    // hostconfig.json too, written in place (IN_CLOSE_WRITE).
    let host = dir.join("hostconfig.json");
    let text = fs::read_to_string(&host)
        .unwrap()
        .replace("\"NetworkMode\": \"default\"", "\"NetworkMode\": \"host\"");
    fs::write(&host, text).unwrap();
    s.refresh();
    let mode = |s: &mut DockerSource| ask(s, Engine::Docker, ID).and_then(|m| m.network_mode);
    assert_eq!(mode(&mut s), Some(crate::model::NetworkMode::Host));
    assert_eq!(counts(&s), (3, 0));

    // The task's recheck finds nothing to stat: every entry is watched.
    recheck_disk(&s.cache, &containers);
    assert_eq!(counts(&s), (3, 0));
    assert_eq!(name(&mut s), Some("media2".into()));
}

#[test]
fn a_container_directory_made_after_the_first_lookup_is_read_when_it_appears_and_when_it_goes() {
    let root = data_root();
    let containers = root.path().join("containers");
    let mut s = DockerSource::files_only(root.path());
    let other = "d".repeat(64);
    assert_eq!(
        ask(&mut s, Engine::Docker, &other),
        None,
        "no directory yet"
    );
    s.refresh();
    assert_eq!(ask(&mut s, Engine::Docker, &other), None);
    assert_eq!(counts(&s).0, 1, "not read again: no event");

    // dockerd makes the directory, then writes the files.
    let dir = containers.join(&other);
    fs::create_dir(&dir).unwrap();
    for f in ["config.v2.json", "hostconfig.json"] {
        fs::copy(containers.join(ID).join(f), dir.join(f)).unwrap();
    }
    s.refresh();
    let m = ask(&mut s, Engine::Docker, &other).expect("read once its directory appeared");
    assert_eq!(m.name.as_deref(), Some("media"));
    assert_eq!(counts(&s), (2, 0));

    // Removed: nothing at the next lookup.
    fs::remove_dir_all(&dir).unwrap();
    s.refresh();
    assert_eq!(ask(&mut s, Engine::Docker, &other), None);
    assert_eq!(counts(&s), (3, 0));
}

#[test]
fn an_entry_on_the_fallback_is_watched_once_its_directory_can_be() {
    // No `containers` yet (dockerd not started): nothing to watch, the mtimes are checked.
    let root = tempfile::tempdir().unwrap();
    let containers = root.path().join("containers");
    let mut s = DockerSource::files_only(root.path());
    assert_eq!(ask(&mut s, Engine::Docker, ID), None);
    assert_eq!(lock(&s.cache).disk.watches(), 0);
    assert_eq!(counts(&s), (1, 1), "read with its mtimes");
    recheck_disk(&s.cache, &containers);
    assert_eq!(counts(&s), (1, 2), "checked");

    // Its files appear: the check marks it stale; the lookup reads and watches it.
    let fixture = data_root();
    fs::create_dir(&containers).unwrap();
    fs::create_dir(containers.join(ID)).unwrap();
    for f in ["config.v2.json", "hostconfig.json"] {
        let from = fixture.path().join("containers").join(ID).join(f);
        fs::copy(from, containers.join(ID).join(f)).unwrap();
    }
    recheck_disk(&s.cache, &containers);
    assert_eq!(
        ask(&mut s, Engine::Docker, ID).and_then(|m| m.name),
        Some("media".into())
    );
    assert_eq!(
        counts(&s),
        (2, 3),
        "checked, then read without mtimes: watched"
    );
    assert_eq!(lock(&s.cache).disk.watches(), 2);
    // From now on an event, not a check, says it changed.
    replace(root.path(), "config.v2.json", "\"/media\"", "\"/media2\"");
    s.refresh();
    assert_eq!(
        ask(&mut s, Engine::Docker, ID).and_then(|m| m.name),
        Some("media2".into())
    );
    recheck_disk(&s.cache, &containers);
    assert_eq!(counts(&s), (3, 3), "no check of a watched entry");
}

#[test]
fn forgotten_entries_take_their_watches_with_them() {
    let root = data_root();
    let containers = root.path().join("containers");
    let mut s = DockerSource::files_only(root.path());
    let other = "e".repeat(64);
    assert!(ask(&mut s, Engine::Docker, ID).is_some());
    assert_eq!(ask(&mut s, Engine::Docker, &other), None);
    assert_eq!(
        lock(&s.cache).disk.watches(),
        2,
        "containers and ID's directory"
    );
    lock(&s.cache).disk.entries.get_mut(ID).unwrap().asked -= FORGET;
    recheck_disk(&s.cache, &containers);
    assert_eq!(
        lock(&s.cache).disk.watches(),
        1,
        "ID's directory is no longer watched"
    );
    lock(&s.cache).disk.entries.get_mut(&other).unwrap().asked -= FORGET;
    recheck_disk(&s.cache, &containers);
    let c = lock(&s.cache);
    assert!(c.disk.entries.is_empty());
    assert_eq!(c.disk.watches(), 0, "inotify closed with the last entry");
}

fn task(socket: PathBuf, timeout: Duration) -> Task {
    Task {
        cache: Arc::default(),
        socket,
        containers: PathBuf::from("/nonexistent"),
        timeout,
    }
}

#[tokio::test]
async fn an_absent_socket_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let e = task(socket.clone(), Duration::from_millis(200))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::Api { .. }), "{e}");
    assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
}

#[tokio::test]
async fn a_socket_that_never_answers_times_out_within_the_metadata_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    // Accepts and reads, never answers.
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let timeout = HumanDuration(Duration::from_millis(300)).0;
    let started = Instant::now();
    let e = task(socket, timeout).connect().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, DockerError::Timeout { .. }), "{e}");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(700),
        "{took:?}"
    );
    server.abort();
}
