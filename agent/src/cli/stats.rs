//! `berth stats`: CPU, memory, pids and IO of containers from their cgroups.

use std::{collections::HashMap, time::Duration};

use super::{args::Format, client::Client, query::human_bytes as human, short, table};
use crate::api::views::{ContainerSummary, StatsView};

pub fn execute_stats(
    client: &Client,
    no_stream: bool,
    format: Format,
    containers: &[String],
) -> anyhow::Result<i32> {
    let mut prev: HashMap<String, (f64, std::time::Instant)> = HashMap::new();
    loop {
        let targets: Vec<String> = if containers.is_empty() {
            client
                .call::<Vec<ContainerSummary>>("GET", "/api/v1/containers", None)?
                .into_iter()
                .map(|c| c.id)
                .collect()
        } else {
            containers.to_vec()
        };
        let mut all = Vec::new();
        for t in &targets {
            all.push(client.call::<StatsView>(
                "GET",
                &format!("/api/v1/containers/{}/stats", super::client::segment(t)),
                None,
            )?);
        }
        if format == Format::Json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            let now = std::time::Instant::now();
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|v| {
                    let s = &v.stats;
                    let id = v.id.clone();
                    let cpu = s.cpu_usage_seconds;
                    let pct = prev
                        .get(&id)
                        .map(|(c, t)| (cpu - c) / now.duration_since(*t).as_secs_f64() * 100.0)
                        .map(|p| format!("{p:.2}%"))
                        .unwrap_or_else(|| "--".into());
                    prev.insert(id.clone(), (cpu, now));
                    let mem = s.memory_usage_bytes as f64;
                    let limit = s
                        .memory_limit_bytes
                        .map(|l| human(l as f64))
                        .unwrap_or_else(|| "unlimited".into());
                    vec![
                        short(&id).to_owned(),
                        v.name.clone(),
                        pct,
                        format!("{} / {limit}", human(mem)),
                        format!(
                            "{} / {}",
                            human(s.io_read_bytes as f64),
                            human(s.io_write_bytes as f64)
                        ),
                        s.pids_current.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "CONTAINER ID",
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "BLOCK I/O",
                    "PIDS",
                ],
                &rows,
            );
        }
        if no_stream {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(1));
        println!();
    }
}
