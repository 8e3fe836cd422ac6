//! Fixtures: the files and the inspect answer of real containers of Debian's dockerd 20.10,
//! made by `docker run -d --name media --label app=media --label tier=rtc -p
//! 40000-40003:40000-40003/udp -p 127.0.0.1:8080:80 -p 9000:9001/tcp`, `docker run -d --name
//! hostnet --network host` and `docker create --name stopped -p 7000-7001:7000-7001 -p 7100`
//! (JSON re-indented, nothing else changed).

use std::fs;

use super::*;
use crate::model::{PortRange, Publish};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/discover/docker/fixtures")
        .join(name)
}

fn range(
    proto: Proto,
    host_ip: Option<[u8; 4]>,
    host: (u16, u16),
    container: (u16, u16),
) -> Publish {
    Publish {
        host_ip: host_ip.map(Ipv4Addr::from),
        host: PortRange {
            start: host.0,
            end: host.1,
        },
        container: PortRange {
            start: container.0,
            end: container.1,
        },
        proto,
    }
}

#[test]
fn a_bridge_container_on_disk_has_its_name_image_labels_address_ports_and_log() {
    let m = read_disk(&fixture("media")).unwrap();
    assert_eq!(m.name.as_deref(), Some("media"));
    assert_eq!(m.image.as_deref(), Some("bb:1"));
    assert_eq!(
        m.labels,
        BTreeMap::from([
            ("app".to_owned(), "media".to_owned()),
            ("tier".to_owned(), "rtc".to_owned())
        ])
    );
    assert_eq!(m.network_mode, Some(NetworkMode::Bridge));
    assert_eq!(m.ip, Some(Ipv4Addr::new(10, 211, 9, 2)));
    assert_eq!(
        m.publish,
        [
            range(Proto::Tcp, None, (9000, 9000), (9001, 9001)),
            range(Proto::Tcp, Some([127, 0, 0, 1]), (8080, 8080), (80, 80)),
            range(Proto::Udp, None, (40000, 40003), (40000, 40003)),
        ]
    );
    // 2026-12-02T00:03:46.407891305Z
    let created = m.created_at.unwrap();
    assert!((created - 1_796_169_826.407_891).abs() < 1e-3, "{created}");
    let log = m.log_path.unwrap();
    assert!(
        log.to_str()
            .unwrap()
            .ends_with("6405ad6793eac41604bf8906fc2540ba4ba68cc4b2eb970671f8a6e8ce93d779-json.log"),
        "{}",
        log.display()
    );
    assert!(!m.sandbox);
}

#[test]
fn the_api_answer_and_the_files_give_the_same_metadata() {
    let text = fs::read_to_string(fixture("media").join("inspect.json")).unwrap();
    let inspect: ContainerInspectResponse = serde_json::from_str(&text).unwrap();
    let api = Fields::from_api(&inspect).meta();
    assert_eq!(api, read_disk(&fixture("media")).unwrap());
}

#[test]
fn a_host_network_container_has_no_address_and_no_ports() {
    let m = read_disk(&fixture("hostnet")).unwrap();
    assert_eq!(m.name.as_deref(), Some("hostnet"));
    assert_eq!(m.network_mode, Some(NetworkMode::Host));
    assert_eq!(m.ip, None);
    assert!(m.publish.is_empty());
}

#[test]
fn a_stopped_container_shows_the_ports_it_asked_for_with_a_fixed_host_port() {
    let m = read_disk(&fixture("stopped")).unwrap();
    assert_eq!(m.network_mode, Some(NetworkMode::Bridge), "`default`");
    assert_eq!(m.ip, None);
    // `-p 7100` leaves the host port to Docker: unknown until it starts.
    assert_eq!(
        m.publish,
        [range(Proto::Tcp, None, (7000, 7001), (7000, 7001))]
    );
}

#[test]
fn missing_or_broken_files_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = read_disk(dir.path()).unwrap_err();
    assert!(matches!(e, DiskError::Read { .. }), "{e}");
    assert!(e.to_string().contains("config.v2.json"), "{e}");

    fs::write(dir.path().join("config.v2.json"), "{\"Name\": 7").unwrap();
    let e = read_disk(dir.path()).unwrap_err();
    assert!(matches!(e, DiskError::Parse { .. }), "{e}");
    assert!(e.to_string().contains("config.v2.json"), "{e}");

    // hostconfig.json is optional; a broken one is an error.
    fs::write(dir.path().join("config.v2.json"), "{\"Name\": \"/x\"}").unwrap();
    let m = read_disk(dir.path()).unwrap();
    assert_eq!(
        (m.name.as_deref(), m.network_mode),
        (Some("x"), None::<NetworkMode>)
    );
    fs::write(dir.path().join("hostconfig.json"), "[]").unwrap();
    let e = read_disk(dir.path()).unwrap_err();
    assert!(e.to_string().contains("hostconfig.json"), "{e}");
}

/// A PortMap from (key, [(host ip, host port)]).
fn port_map(entries: &[(&str, &[(&str, &str)])]) -> PortMap {
    entries
        .iter()
        .map(|(k, list)| {
            (
                (*k).to_owned(),
                Some(
                    list.iter()
                        .map(|(ip, port)| bollard::models::PortBinding {
                            host_ip: Some((*ip).to_owned()),
                            host_port: Some((*port).to_owned()),
                        })
                        .collect(),
                ),
            )
        })
        .collect()
}

#[test]
fn consecutive_ports_group_into_ranges_and_both_wildcards_are_one() {
    let mut entries: Vec<(String, Vec<(&str, String)>)> = (40000..40100)
        .map(|p| {
            (
                format!("{p}/udp"),
                vec![("0.0.0.0", p.to_string()), ("::", p.to_string())],
            )
        })
        .collect();
    // A gap, then a run whose container ports are shifted by one at 50002.
    entries.push(("50000/udp".into(), vec![("", "50000".into())]));
    entries.push(("50001/udp".into(), vec![("", "50001".into())]));
    entries.push(("50003/udp".into(), vec![("", "50002".into())]));
    let owned: Vec<(&str, Vec<(&str, &str)>)> = entries
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.iter().map(|(i, p)| (*i, p.as_str())).collect(),
            )
        })
        .collect();
    let borrowed: Vec<(&str, &[(&str, &str)])> =
        owned.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let map = port_map(&borrowed);
    assert_eq!(
        group_bindings(bindings(Some(&map))),
        [
            range(Proto::Udp, None, (40000, 40099), (40000, 40099)),
            range(Proto::Udp, None, (50000, 50001), (50000, 50001)),
            range(Proto::Udp, None, (50002, 50002), (50003, 50003)),
        ]
    );
}

#[test]
fn protocols_and_host_addresses_split_ranges() {
    let map = port_map(&[
        ("80/tcp", &[("0.0.0.0", "8080")]),
        ("81/tcp", &[("127.0.0.1", "8081")]),
        ("82/tcp", &[("0.0.0.0", "8082")]),
        ("81/udp", &[("0.0.0.0", "8081")]),
        ("80/udp", &[("0.0.0.0", "8080")]),
        // No protocol means TCP.
        ("83", &[("0.0.0.0", "8083")]),
    ]);
    assert_eq!(
        group_bindings(bindings(Some(&map))),
        [
            range(Proto::Tcp, None, (8080, 8080), (80, 80)),
            range(Proto::Tcp, None, (8082, 8083), (82, 83)),
            range(Proto::Tcp, Some([127, 0, 0, 1]), (8081, 8081), (81, 81)),
            range(Proto::Udp, None, (8080, 8081), (80, 81)),
        ]
    );
}

#[test]
fn bindings_berth_cannot_represent_are_left_out() {
    let map = port_map(&[
        // A specific IPv6 address, SCTP, port 0, no host port, garbage.
        ("80/tcp", &[("::1", "8080")]),
        ("132/sctp", &[("0.0.0.0", "132")]),
        ("0/tcp", &[("0.0.0.0", "9000")]),
        ("81/tcp", &[("0.0.0.0", "")]),
        ("82/tcp", &[("0.0.0.0", "0")]),
        ("x/tcp", &[("0.0.0.0", "9001")]),
        ("83/tcp", &[("not-an-ip", "9002")]),
        ("84/tcp", &[("0.0.0.0", "99999")]),
    ]);
    assert!(group_bindings(bindings(Some(&map))).is_empty());
    // An exposed port without a binding is `null`.
    let exposed: PortMap = HashMap::from([("80/tcp".to_owned(), None)]);
    assert!(group_bindings(bindings(Some(&exposed))).is_empty());
    assert!(group_bindings(bindings(None)).is_empty());
}

#[test]
fn network_modes_map_to_berths_and_times_to_unix_seconds() {
    assert_eq!(network_mode("host"), NetworkMode::Host);
    assert_eq!(network_mode("none"), NetworkMode::None);
    for other in ["default", "bridge", "mynet", "container:abc"] {
        assert_eq!(network_mode(other), NetworkMode::Bridge, "{other}");
    }
    assert_eq!(unix_seconds("1970-01-01T00:00:10.5Z"), Some(10.5));
    // Docker's zero time and garbage.
    assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), None);
    assert_eq!(unix_seconds("yesterday"), None);
}
