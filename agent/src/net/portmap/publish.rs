//! What a user publishes: `-p [IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp]` parsed into a
//! [`Publish`], and the overlap rule between publishes ([`check_conflicts`]).
//!
//! The syntax is Docker's, minus the forms where Docker picks a host port for you (`-p 80`,
//! `-p IP::80`, `-p 8000-8010:80`): berth always maps host port `h` to container port
//! `h - HOST + CTR`, so both ranges must have the same length. `0.0.0.0` as the host address means
//! "every address" and is stored as `None`. IPv6 host addresses are refused (the backends program
//! an `ip` family table only).

use std::net::Ipv4Addr;

use super::PortmapError;

pub use crate::model::net::{PortRange, Proto, Publish, PublishError};

/// Parses one `-p` value in Docker syntax. Errors name the value, e.g.
/// `-p 80:80/sctp: unknown protocol sctp; use tcp or udp`.
pub fn parse_publish(s: &str) -> Result<Publish, PortmapError> {
    parse(s).map_err(|source| PortmapError::Publish {
        value: s.to_owned(),
        source,
    })
}

fn parse(s: &str) -> Result<Publish, PublishError> {
    if s.trim().is_empty() {
        return Err(PublishError::Empty);
    }
    let (addr_ports, proto) = match s.rsplit_once('/') {
        Some((rest, proto)) => (rest, proto.parse::<Proto>()?),
        None => (s, Proto::Tcp),
    };
    if addr_ports.starts_with('[') || addr_ports.matches(':').count() > 2 {
        // `[::1]:80:80` or a bare IPv6 address.
        if let Some(end) = addr_ports.rfind(']') {
            return Err(PublishError::Ipv6 {
                text: addr_ports[..=end].to_owned(),
            });
        }
        return Err(PublishError::TooManyParts);
    }
    let parts: Vec<&str> = addr_ports.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [container] => {
            let range = parse_range(container)?;
            return Err(PublishError::MissingHostPort {
                example: format!("{range}:{range}"),
            });
        }
        [host, container] => (None, *host, *container),
        [ip, host, container] => (Some(*ip), *host, *container),
        _ => return Err(PublishError::TooManyParts),
    };
    let host_ip = match ip {
        None => None,
        Some(text) => {
            let ip: Ipv4Addr = text.parse().map_err(|_| PublishError::BadIp {
                text: text.to_owned(),
            })?;
            (!ip.is_unspecified()).then_some(ip)
        }
    };
    if host.is_empty() {
        return Err(PublishError::MissingHostPort {
            example: format!("{container}:{container}"),
        });
    }
    let publish = Publish {
        host_ip,
        host: parse_range(host)?,
        container: parse_range(container)?,
        proto,
    };
    publish.check()?;
    Ok(publish)
}

fn parse_range(text: &str) -> Result<PortRange, PublishError> {
    match text.split_once('-') {
        Some((a, b)) => PortRange::new(parse_port(a)?, parse_port(b)?),
        None => PortRange::single(parse_port(text)?),
    }
}

fn parse_port(text: &str) -> Result<u16, PublishError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 12 {
        return Err(PublishError::NotAPort {
            text: text.to_owned(),
        });
    }
    let port: u64 = text.parse().map_err(|_| PublishError::NotAPort {
        text: text.to_owned(),
    })?;
    match u16::try_from(port) {
        Ok(0) => Err(PublishError::PortZero),
        Ok(p) => Ok(p),
        Err(_) => Err(PublishError::PortTooLarge { port }),
    }
}

/// Refuses publishes that overlap: the same protocol and host port on the same host address, or
/// where either side listens on every address. Checks `new` against `existing` and against
/// itself (two `-p` flags of one container).
pub fn check_conflicts(new: &[Publish], existing: &[Publish]) -> Result<(), PortmapError> {
    for (i, p) in new.iter().enumerate() {
        p.check().map_err(|source| PortmapError::Publish {
            value: p.to_string(),
            source,
        })?;
        for other in new[..i].iter().chain(existing) {
            if let Some(port) = p.overlap(other) {
                return Err(PortmapError::Conflict {
                    new: p.clone(),
                    existing: other.clone(),
                    port,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Publish {
        parse_publish(s).unwrap()
    }

    fn err(s: &str) -> String {
        parse_publish(s).unwrap_err().to_string()
    }

    #[test]
    fn a_single_port_defaults_to_tcp_on_every_address() {
        assert_eq!(
            p("8080:80"),
            Publish {
                host_ip: None,
                host: PortRange {
                    start: 8080,
                    end: 8080
                },
                container: PortRange { start: 80, end: 80 },
                proto: Proto::Tcp,
            }
        );
    }

    #[test]
    fn ranges_ip_and_protocol_are_read() {
        let got = p("192.168.1.5:40000-59999:10000-29999/udp");
        assert_eq!(got.host_ip, Some(Ipv4Addr::new(192, 168, 1, 5)));
        assert_eq!(
            got.host,
            PortRange {
                start: 40000,
                end: 59999
            }
        );
        assert_eq!(
            got.container,
            PortRange {
                start: 10000,
                end: 29999
            }
        );
        assert_eq!(got.proto, Proto::Udp);
        assert_eq!(got.len(), 20_000);
        assert_eq!(got.pairs().nth(5), Some((40005, 10005)));
        assert_eq!(p("1-65535:1-65535/TCP").len(), 65_535);
        assert_eq!(p("53:53/tcp").proto, Proto::Tcp);
    }

    #[test]
    fn the_unspecified_address_means_every_address() {
        assert_eq!(p("0.0.0.0:80:80").host_ip, None);
    }

    #[test]
    fn display_gives_back_docker_syntax() {
        for s in [
            "127.0.0.1:8080:80/tcp",
            "5000-5009:6000-6009/udp",
            "80:80/tcp",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("80:80").to_string(), "80:80/tcp");
    }

    #[test]
    fn errors_name_the_flag_value_and_the_reason() {
        assert_eq!(
            err("80:80/sctp"),
            "-p 80:80/sctp: unknown protocol sctp; use tcp or udp"
        );
        assert!(err("90-80:90-80").contains("range 90-80 is reversed"));
        assert!(err("80-89:80-88").contains("host range has 10 ports but container range has 9"));
        assert!(err("0:80").contains("port 0"));
        assert!(err("80:0").contains("port 0"));
        assert!(err("70000:80").contains("port 70000 is out of range"));
        assert!(err("99999999999999:80").contains("is not a port number"));
        assert!(err("1.2.3:80:80").contains("\"1.2.3\" is not an IPv4 address"));
        assert!(err("[::1]:80:80").contains("IPv6"));
        assert!(err("80").contains("missing host port"));
        assert!(err("80").contains("80:80"));
        assert!(err("127.0.0.1::80").contains("missing host port"));
        assert!(err("").contains("empty value"));
        assert!(err("abc").contains("\"abc\" is not a port number"));
        assert!(err("a:b").contains("\"a\" is not a port number"));
        assert!(err("80:80/").contains("unknown protocol"));
        assert!(err("1:2:3:4").contains("too many"));
        assert!(err("80 :80").contains("is not a port number"));
        assert!(err("-80:80").contains("is not a port number"));
        assert!(err("+80:80").contains("is not a port number"));
        assert!(err("80-:80").contains("is not a port number"));
        for bad in ["80:80/udp/tcp", "80:80\n", "€:80", "1-2-3:1-2-3"] {
            assert!(parse_publish(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn overlapping_ports_on_the_same_or_a_wildcard_address_conflict() {
        let existing = [p("5000-5999:5000-5999/udp"), p("10.0.0.1:80:80")];
        // Same proto, overlapping range, wildcard on both sides.
        let e = check_conflicts(&[p("5999-6000:1-2/udp")], &existing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-p 5999-6000:1-2/udp overlaps -p 5000-5999:5000-5999/udp: both publish udp port 5999 \
             on every host address"
        );
        // Specific address against a wildcard one.
        let e = check_conflicts(&[p("10.0.0.9:5500:1/udp")], &existing).unwrap_err();
        assert!(e.to_string().ends_with("udp port 5500 on 10.0.0.9"), "{e}");
        // Wildcard against a specific one.
        assert!(check_conflicts(&[p("80:8080")], &existing).is_err());
        // Same specific address.
        assert!(check_conflicts(&[p("10.0.0.1:80:81")], &existing).is_err());
    }

    #[test]
    fn other_protocols_other_addresses_and_adjacent_ranges_do_not_conflict() {
        let existing = [p("5000-5999:5000-5999/udp"), p("10.0.0.1:80:80")];
        let ok = [
            p("5000-5999:5000-5999/tcp"),
            p("6000:6000/udp"),
            p("4999:4999/udp"),
            p("10.0.0.2:80:80"),
            p("81:80"),
        ];
        check_conflicts(&ok, &existing).unwrap();
        check_conflicts(&[], &existing).unwrap();
    }

    #[test]
    fn publishes_of_one_container_conflict_with_each_other() {
        let e = check_conflicts(&[p("80:80"), p("79-81:79-81")], &[]).unwrap_err();
        assert!(e.to_string().contains("both publish tcp port 80"), "{e}");
    }

    #[test]
    fn hand_built_invalid_publishes_are_refused_not_mapped() {
        let bad = Publish {
            host_ip: None,
            host: PortRange { start: 10, end: 20 },
            container: PortRange { start: 10, end: 10 },
            proto: Proto::Udp,
        };
        let e = check_conflicts(&[bad], &[]).unwrap_err();
        assert!(e.to_string().contains("same length"), "{e}");
    }
}
