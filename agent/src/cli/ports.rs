//! `berth ports [CONTAINER]`: every published mapping, with its backend.

use super::{args::Format, client::Client, short, table};

fn range(r: &serde_json::Value) -> String {
    let (a, b) = (
        r["start"].as_u64().unwrap_or(0),
        r["end"].as_u64().unwrap_or(0),
    );
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

pub fn execute_ports(
    client: &Client,
    container: Option<&str>,
    format: Format,
) -> anyhow::Result<i32> {
    let mut list: Vec<serde_json::Value> = client.call("GET", "/api/v1/ports", None)?;
    if let Some(c) = container {
        let v: serde_json::Value = client.call(
            "GET",
            &format!("/api/v1/containers/{}", super::client::segment(c)),
            None,
        )?;
        list.retain(|p| p["container"] == v["id"]);
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let m = &p["publish"];
            let host_ip = m["host_ip"].as_str().unwrap_or("0.0.0.0");
            vec![
                short(p["container"].as_str().unwrap_or_default()).to_owned(),
                p["name"].as_str().unwrap_or_default().to_owned(),
                format!("{host_ip}:{}", range(&m["host"])),
                format!(
                    "{}:{}",
                    p["ip"].as_str().unwrap_or("-"),
                    range(&m["container"])
                ),
                m["proto"].as_str().unwrap_or_default().to_owned(),
                p["backend"].as_str().unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER ID",
            "NAME",
            "HOST",
            "CONTAINER",
            "PROTO",
            "BACKEND",
        ],
        &rows,
    );
    Ok(0)
}
