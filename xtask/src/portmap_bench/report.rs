//! Results: every measured cell, as JSON and as markdown tables shaped like PLATFORM.md's
//! "Port-mapping cost measured here", plus the ratios the goal is judged by.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Mode;

/// One (mechanism, published ports, traffic mode) measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub mechanism: String,
    pub ports: usize,
    pub mode: Mode,
    /// (sender run time + ksoftirqd run time) / packets sent, µs.
    pub us_per_packet: f64,
    pub sender_us_per_packet: f64,
    pub softirq_us_per_packet: f64,
    pub packets: u64,
    /// Datagrams the sink received during the case (drops show as received < packets).
    pub received: u64,
    pub secs: f64,
    /// Of `secs`, how long the sender was runnable but kept off its CPU by other work (a
    /// busy machine; the cost per packet counts CPU time only, but caches suffer).
    pub sender_waited_secs: f64,
    /// sendmmsg calls refused with ENOBUFS/EAGAIN and retried.
    pub send_retries: u64,
}

/// Rule installation and removal of one mechanism at one port count.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    pub mechanism: String,
    pub ports: usize,
    pub install_ms: f64,
    pub remove_ms: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MechanismInfo {
    pub name: String,
    pub label: String,
    pub rules: String,
    /// Whether it installs rules (flatness ratios are shown for those).
    pub mapped: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub machine: String,
    /// How cases were bounded and pinned, for the record.
    pub settings: Value,
    pub mechanisms: Vec<MechanismInfo>,
    pub port_counts: Vec<usize>,
    pub modes: Vec<Mode>,
    pub cells: Vec<Cell>,
    pub setups: Vec<Setup>,
    /// Mechanism the others are compared with ("nft-map").
    pub reference: String,
    pub total_secs: f64,
}

/// Flatness goal for the reference mechanism: cost at the most ports / cost at the fewest.
pub const FLATNESS_GOAL: f64 = 1.1;

impl Report {
    pub fn cell(&self, mechanism: &str, ports: usize, mode: Mode) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.mechanism == mechanism && c.ports == ports && c.mode == mode)
    }

    pub fn us(&self, mechanism: &str, ports: usize, mode: Mode) -> Option<f64> {
        self.cell(mechanism, ports, mode).map(|c| c.us_per_packet)
    }

    /// Cost at the most published ports / cost at the fewest.
    pub fn flatness(&self, mechanism: &str, mode: Mode) -> Option<f64> {
        let (lo, hi) = (*self.port_counts.first()?, *self.port_counts.last()?);
        if lo == hi {
            return None;
        }
        Some(self.us(mechanism, hi, mode)? / self.us(mechanism, lo, mode)?)
    }

    /// Cost of `a` / cost of `b` at the same port count and mode.
    pub fn versus(&self, a: &str, b: &str, ports: usize, mode: Mode) -> Option<f64> {
        Some(self.us(a, ports, mode)? / self.us(b, ports, mode)?)
    }

    /// Whether the reference mechanism is flat enough in every mode (None: not measured).
    pub fn goal_met(&self) -> Option<bool> {
        let worst = self
            .modes
            .iter()
            .map(|&m| self.flatness(&self.reference, m))
            .collect::<Option<Vec<f64>>>()?
            .into_iter()
            .fold(0.0, f64::max);
        Some(worst <= FLATNESS_GOAL)
    }

    pub fn to_json(&self) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| {
                let setup = self
                    .setups
                    .iter()
                    .find(|s| s.mechanism == c.mechanism && s.ports == c.ports);
                json!({
                    "mechanism": c.mechanism,
                    "ports": c.ports,
                    "mode": c.mode.name(),
                    "us_per_packet": c.us_per_packet,
                    "sender_us_per_packet": c.sender_us_per_packet,
                    "softirq_us_per_packet": c.softirq_us_per_packet,
                    "packets": c.packets,
                    "received": c.received,
                    "secs": c.secs,
                    "sender_waited_secs": c.sender_waited_secs,
                    "send_retries": c.send_retries,
                    "setup_ms": setup.map(|s| s.install_ms),
                    "remove_ms": setup.map(|s| s.remove_ms),
                })
            })
            .collect();
        let mut flatness = serde_json::Map::new();
        let mut versus = Vec::new();
        for m in self.mechanisms.iter().filter(|m| m.mapped) {
            let per_mode: serde_json::Map<String, Value> = self
                .modes
                .iter()
                .map(|&mode| (mode.name().to_owned(), json!(self.flatness(&m.name, mode))))
                .collect();
            flatness.insert(m.name.clone(), Value::Object(per_mode));
            if m.name == self.reference {
                continue;
            }
            for &p in &self.port_counts {
                let per_mode: serde_json::Map<String, Value> = self
                    .modes
                    .iter()
                    .map(|&mode| {
                        let r = self.versus(&m.name, &self.reference, p, mode);
                        (mode.name().to_owned(), json!(r))
                    })
                    .collect();
                versus.push(json!({"mechanism": m.name, "reference": self.reference,
                    "ports": p, "ratio": per_mode}));
            }
        }
        json!({
            "machine": self.machine,
            "settings": self.settings,
            "mechanisms": self.mechanisms.iter().map(|m| json!({
                "name": m.name, "label": m.label, "rules": m.rules})).collect::<Vec<_>>(),
            "cells": cells,
            "flatness": flatness,
            "flatness_goal": FLATNESS_GOAL,
            "goal_met": self.goal_met(),
            "versus_reference": versus,
            "total_secs": self.total_secs,
        })
    }

    /// The summary table (one row per mechanism, " / "-separated values per port count, as
    /// in PLATFORM.md), ratios, and a detail table of every cell.
    pub fn to_markdown(&self) -> String {
        let counts = join(self.port_counts.iter().map(|&p| fmt_count(p as u64)));
        let mut s = String::new();
        let _ = write!(s, "| mechanism | rules | published ports |");
        for m in &self.modes {
            let _ = write!(s, " {} |", m.title());
        }
        s.push_str(" setup ms |\n|---|---|---|");
        s.push_str(&"---|".repeat(self.modes.len() + 1));
        s.push('\n');
        for m in &self.mechanisms {
            let _ = write!(s, "| {} | {} | {counts} |", m.label, m.rules);
            for &mode in &self.modes {
                let v = self
                    .port_counts
                    .iter()
                    .map(|&p| self.us(&m.name, p, mode).map_or("-".into(), fmt_us));
                let _ = write!(s, " {} |", join(v));
            }
            let setup = if m.mapped {
                join(self.port_counts.iter().map(|&p| {
                    self.setups
                        .iter()
                        .find(|x| x.mechanism == m.name && x.ports == p)
                        .map_or("-".into(), |x| fmt_count(x.install_ms.round() as u64))
                }))
            } else {
                "-".into()
            };
            let _ = writeln!(s, " {setup} |");
        }
        s.push_str("\nCPU µs per UDP packet (sender + softirq).\n");

        let mapped: Vec<&MechanismInfo> = self.mechanisms.iter().filter(|m| m.mapped).collect();
        if let (Some(lo), Some(hi)) = (self.port_counts.first(), self.port_counts.last())
            && lo != hi
            && !mapped.is_empty()
        {
            let _ = write!(
                s,
                "\nFlatness: cost at {} ports / cost at {} ports (goal for {} <= {FLATNESS_GOAL}x",
                fmt_count(*hi as u64),
                fmt_count(*lo as u64),
                self.reference,
            );
            let _ = writeln!(
                s,
                ": {}).\n",
                match self.goal_met() {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "not measured",
                }
            );
            self.ratio_header(&mut s, "mechanism");
            for m in &mapped {
                let _ = write!(s, "| {} |", m.name);
                for &mode in &self.modes {
                    let _ = write!(s, " {} |", fmt_ratio(self.flatness(&m.name, mode)));
                }
                s.push('\n');
            }
        }
        let others: Vec<&&MechanismInfo> =
            mapped.iter().filter(|m| m.name != self.reference).collect();
        if mapped.iter().any(|m| m.name == self.reference) && !others.is_empty() {
            let _ = writeln!(
                s,
                "\nEach mechanism / {} at the same port count:\n",
                self.reference
            );
            self.ratio_header(&mut s, "mechanism | ports");
            for m in others {
                for &p in &self.port_counts {
                    let _ = write!(s, "| {} | {} |", m.name, fmt_count(p as u64));
                    for &mode in &self.modes {
                        let r = self.versus(&m.name, &self.reference, p, mode);
                        let _ = write!(s, " {} |", fmt_ratio(r));
                    }
                    s.push('\n');
                }
            }
        }

        s.push_str(
            "\nEvery cell: µs/packet = sender µs + ksoftirqd µs; delivered = received by the \
             sink / sent; s = sending time, of which the sender waited for its CPU (other \
             load).\n\n| mechanism | ports | mode | µs/packet | sender | ksoftirqd | packets | \
             delivered | s | waited s |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.cells {
            let delivered = if c.packets == 0 {
                0.0
            } else {
                100.0 * c.received as f64 / c.packets as f64
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {delivered:.1}% | {:.2} | {:.2} |",
                c.mechanism,
                fmt_count(c.ports as u64),
                c.mode.name(),
                fmt_us(c.us_per_packet),
                c.sender_us_per_packet,
                c.softirq_us_per_packet,
                fmt_count(c.packets),
                c.secs,
                c.sender_waited_secs,
            );
        }
        s
    }

    fn ratio_header(&self, s: &mut String, first: &str) {
        let _ = write!(s, "| {first} |");
        for m in &self.modes {
            let _ = write!(s, " {} |", m.title());
        }
        let cols = first.matches('|').count() + 1 + self.modes.len();
        let _ = writeln!(s, "\n|{}", "---|".repeat(cols));
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(" / ")
}

/// 1234567 -> "1,234,567".
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// µs as PLATFORM.md writes them: one decimal below 100, whole numbers with thousands
/// separators above.
pub fn fmt_us(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        fmt_count(v.round() as u64)
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.2}x"),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_in_platform_md() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(20000), "20,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_us(5.04), "5.0");
        assert_eq!(fmt_us(36.84), "36.8");
        assert_eq!(fmt_us(99.96), "100");
        assert_eq!(fmt_us(1021.6), "1,022");
        assert_eq!(fmt_us(f64::NAN), "-");
    }

    fn cell(mechanism: &str, ports: usize, mode: Mode, us: f64) -> Cell {
        Cell {
            mechanism: mechanism.into(),
            ports,
            mode,
            us_per_packet: us,
            sender_us_per_packet: us - 0.5,
            softirq_us_per_packet: 0.5,
            packets: 1000,
            received: 990,
            secs: 0.25,
            sender_waited_secs: 0.05,
            send_retries: 0,
        }
    }

    fn sample() -> Report {
        let info = |name: &str, label: &str, rules: &str, mapped| MechanismInfo {
            name: name.into(),
            label: label.into(),
            rules: rules.into(),
            mapped,
        };
        let mut cells = Vec::new();
        for (p, nft, ipt) in [(100, 7.3, 9.0), (20000, 7.9, 1022.0)] {
            for mode in Mode::ALL {
                cells.push(cell("host", p, mode, 5.0));
                cells.push(cell("nft-map", p, mode, nft));
                cells.push(cell("iptables", p, mode, ipt));
            }
        }
        Report {
            machine: "2 vCPU test".into(),
            settings: json!({}),
            mechanisms: vec![
                info("host", "host netns", "0", false),
                info("nft-map", "one nft map rule", "1 + map", true),
                info(
                    "iptables",
                    "iptables-nft, Docker's rules",
                    "3 per port",
                    true,
                ),
            ],
            port_counts: vec![100, 20000],
            modes: Mode::ALL.to_vec(),
            cells,
            setups: vec![
                Setup {
                    mechanism: "nft-map".into(),
                    ports: 100,
                    install_ms: 12.4,
                    remove_ms: 3.0,
                },
                Setup {
                    mechanism: "nft-map".into(),
                    ports: 20000,
                    install_ms: 1234.0,
                    remove_ms: 30.0,
                },
            ],
            reference: "nft-map".into(),
            total_secs: 1.0,
        }
    }

    #[test]
    fn summary_rows_hold_one_value_per_port_count() {
        let md = sample().to_markdown();
        assert!(md.starts_with(
            "| mechanism | rules | published ports | one-way flow | established | \
             new flow per packet | setup ms |\n|---|---|---|---|---|---|---|\n"
        ));
        assert!(md.contains(
            "| host netns | 0 | 100 / 20,000 | 5.0 / 5.0 | 5.0 / 5.0 | 5.0 / 5.0 | - |\n"
        ));
        assert!(md.contains(
            "| one nft map rule | 1 + map | 100 / 20,000 | 7.3 / 7.9 | 7.3 / 7.9 | 7.3 / 7.9 | 12 / 1,234 |\n"
        ));
        assert!(md.contains(
            "| iptables-nft, Docker's rules | 3 per port | 100 / 20,000 | 9.0 / 1,022 |"
        ));
    }

    #[test]
    fn ratios_compare_ends_and_mechanisms() {
        let r = sample();
        assert!((r.flatness("nft-map", Mode::OneWay).unwrap() - 7.9 / 7.3).abs() < 1e-9);
        assert_eq!(r.goal_met(), Some(true));
        let md = r.to_markdown();
        assert!(md.contains("goal for nft-map <= 1.1x: met"), "{md}");
        assert!(md.contains("| nft-map | 1.08x | 1.08x | 1.08x |\n"), "{md}");
        assert!(md.contains("| iptables | 20,000 | 129.37x |"), "{md}");
        assert!(
            !md.contains("| host | 1.00x"),
            "no flatness row for rule-less mechanisms"
        );
    }

    #[test]
    fn missing_cells_show_as_dashes_and_null() {
        let mut r = sample();
        r.cells
            .retain(|c| !(c.mechanism == "nft-map" && c.ports == 20000));
        assert_eq!(r.goal_met(), None);
        let md = r.to_markdown();
        assert!(md.contains("| 7.3 / - |"), "{md}");
        let j = r.to_json();
        assert_eq!(j["goal_met"], Value::Null);
        assert_eq!(j["flatness"]["nft-map"]["one-way"], Value::Null);
    }

    #[test]
    fn json_cells_carry_setup_times() {
        let j = sample().to_json();
        let c = j["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["mechanism"] == "nft-map" && c["ports"] == 20000)
            .unwrap();
        assert_eq!(c["setup_ms"], 1234.0);
        assert_eq!(c["mode"], "one-way");
        assert_eq!(
            j["versus_reference"][1]["ratio"]["new-flow"],
            json!(1022.0 / 7.9)
        );
    }
}
