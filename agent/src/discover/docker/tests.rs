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
    assert!(lock(&s.cache).disk.contains_key(&other));
}

#[test]
fn a_recheck_rereads_changed_files_and_forgets_ids_no_longer_asked_about() {
    let root = data_root();
    let mut s = DockerSource::files_only(root.path());
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
    recheck_disk(&s.cache, &containers);
    assert_eq!(
        ask(&mut s, Engine::Docker, ID).and_then(|m| m.name),
        Some("media2".into())
    );

    // `other` was not asked about for longer than FORGET: dropped at the next recheck; ID,
    // asked just now, stays.
    lock(&s.cache).disk.get_mut(&other).unwrap().asked -= FORGET;
    recheck_disk(&s.cache, &containers);
    let c = lock(&s.cache);
    assert!(c.disk.contains_key(ID) && !c.disk.contains_key(&other));
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
    assert!(!lock(&s.cache).disk.contains_key(&other));
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
