//! `berth ps`: containers as a table (Docker's columns) or JSON.

use super::{ago, args::Format, client::Client, short, table};
use crate::{api::views::ContainerSummary, model::Status, runtime::store::now_secs};

pub fn execute_ps(client: &Client, all: bool, format: Format, quiet: bool) -> anyhow::Result<i32> {
    let path = format!("/api/v1/containers?all={all}");
    if format == Format::Json && !quiet {
        // Everything the agent sends, as it sends it.
        let raw: serde_json::Value = client.call("GET", &path, None)?;
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(0);
    }
    let list: Vec<ContainerSummary> = client.call("GET", &path, None)?;
    if quiet {
        for c in &list {
            println!("{}", short(&c.id));
        }
        return Ok(0);
    }
    let now = now_secs();
    // Docker's columns; ENGINE (and POD) only when another engine's container (a pod's) is
    // listed, so a berth-only host reads as it always did.
    let engines = list.iter().any(|c| !c.is_berth());
    let pods = list.iter().any(|c| c.k8s_pod().is_some());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let mut command = c.args.join(" ");
            if command.chars().count() > 30 {
                command = command.chars().take(29).collect::<String>() + "…";
            }
            let mut row = vec![
                short(&c.id).to_owned(),
                c.image.clone(),
                format!("\"{command}\""),
                format!("{} ago", ago(now - c.created_at)),
                status(c, now),
            ];
            if engines {
                row.push(if c.engine.is_empty() {
                    "berth".to_owned()
                } else {
                    c.engine.clone()
                });
            }
            if pods {
                row.push(c.k8s_pod().unwrap_or_default());
            }
            row.push(c.name.clone());
            row
        })
        .collect();
    let mut header = vec!["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"];
    if engines {
        header.push("ENGINE");
    }
    if pods {
        header.push("POD");
    }
    header.push("NAMES");
    table(&header, &rows);
    Ok(0)
}

/// "Up 5 seconds", "Exited (137) 3 seconds ago", "Restarting (1) 2 seconds ago".
pub fn status(c: &ContainerSummary, now: f64) -> String {
    let s = &c.state;
    match c.status {
        Status::Running => format!("Up {}", ago(now - s.started_at.unwrap_or(now))),
        Status::Exited => match s.exit_code {
            Some(code) => format!(
                "Exited ({code}) {} ago",
                ago(now - s.finished_at.unwrap_or(now))
            ),
            None => "Exited (unknown)".into(),
        },
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code.unwrap_or(-1),
            ago(now - s.finished_at.unwrap_or(now))
        ),
        other => other.to_string(),
    }
}
