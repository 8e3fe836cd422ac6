//! `berth ps`: containers as a table (Docker's columns) or JSON.

use super::{ago, args::Format, client::Client, short, table};
use crate::runtime::store::now_secs;

pub fn execute_ps(client: &Client, all: bool, format: Format, quiet: bool) -> anyhow::Result<i32> {
    let path = format!("/api/v1/containers?all={all}");
    let list: Vec<serde_json::Value> = client.call("GET", &path, None)?;
    if quiet {
        for c in &list {
            println!("{}", short(c["id"].as_str().unwrap_or_default()));
        }
        return Ok(0);
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    let now = now_secs();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let args: Vec<&str> = c["args"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let mut command = args.join(" ");
            if command.chars().count() > 30 {
                command = command.chars().take(29).collect::<String>() + "…";
            }
            vec![
                short(c["id"].as_str().unwrap_or_default()).to_owned(),
                c["image"].as_str().unwrap_or_default().to_owned(),
                format!("\"{command}\""),
                format!("{} ago", ago(now - c["created_at"].as_f64().unwrap_or(now))),
                status(c, now),
                c["name"].as_str().unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ],
        &rows,
    );
    Ok(0)
}

/// "Up 5 seconds", "Exited (137) 3 seconds ago", "Restarting (1) 2 seconds ago".
pub fn status(c: &serde_json::Value, now: f64) -> String {
    let s = &c["state"];
    match c["status"].as_str().unwrap_or("") {
        "running" => format!("Up {}", ago(now - s["started_at"].as_f64().unwrap_or(now))),
        "exited" => match s["exit_code"].as_i64() {
            Some(code) => format!(
                "Exited ({code}) {} ago",
                ago(now - s["finished_at"].as_f64().unwrap_or(now))
            ),
            None => "Exited (unknown)".into(),
        },
        "restarting" => format!(
            "Restarting ({}) {} ago",
            s["exit_code"].as_i64().unwrap_or(-1),
            ago(now - s["finished_at"].as_f64().unwrap_or(now))
        ),
        other => other.to_owned(),
    }
}
