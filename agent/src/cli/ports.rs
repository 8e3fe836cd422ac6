//! `berth ports [CONTAINER]`: every published mapping of every engine's containers, with its
//! backend (berth's) and what a new flow to it costs in netfilter.

use super::{args::Format, client::Client, short, table};
use crate::{
    api::views::{ContainerSummary, PortSummary},
    model::PortRange,
};

fn range(r: &PortRange) -> String {
    if r.start == r.end {
        r.start.to_string()
    } else {
        format!("{}-{}", r.start, r.end)
    }
}

pub fn execute_ports(
    client: &Client,
    container: Option<&str>,
    format: Format,
) -> anyhow::Result<i32> {
    let id = match container {
        Some(c) => Some(
            client
                .call::<ContainerSummary>(
                    "GET",
                    &format!("/api/v1/containers/{}", super::client::segment(c)),
                    None,
                )?
                .id,
        ),
        None => None,
    };
    if format == Format::Json {
        // Everything the agent sends (netfilter cost included), as it sends it.
        let mut raw: Vec<serde_json::Value> = client.call("GET", "/api/v1/ports", None)?;
        if let Some(id) = &id {
            raw.retain(|p| p.get("container").and_then(|c| c.as_str()) == Some(id));
        }
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(0);
    }
    let mut list: Vec<PortSummary> = client.call("GET", "/api/v1/ports", None)?;
    if let Some(id) = &id {
        list.retain(|p| &p.container == id);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let m = &p.publish;
            let host_ip = m
                .host_ip
                .map_or_else(|| "0.0.0.0".to_owned(), |ip| ip.to_string());
            let new_flow = p
                .netfilter
                .as_ref()
                .and_then(|n| n.new_flow_ns_per_packet)
                .map_or_else(|| "-".to_owned(), |ns| format!("{:.1}", ns / 1e3));
            vec![
                short(&p.container).to_owned(),
                p.name.clone(),
                p.engine.clone().unwrap_or_default(),
                format!("{host_ip}:{}", range(&m.host)),
                format!(
                    "{}:{}",
                    p.ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                    range(&m.container)
                ),
                m.proto.to_string(),
                p.backend.map(|b| b.to_string()).unwrap_or_default(),
                new_flow,
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER ID",
            "NAME",
            "ENGINE",
            "HOST",
            "CONTAINER",
            "PROTO",
            "BACKEND",
            "NEW FLOW µs",
        ],
        &rows,
    );
    Ok(0)
}
