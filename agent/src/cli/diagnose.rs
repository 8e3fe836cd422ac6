//! `berth diagnose`: the agent's findings, most severe first, each with its cause, the numbers
//! and the fix. Exit status 1 when there is a critical finding, for scripts and health checks.

use super::{args::Format, client::Client};

pub fn execute_diagnose(client: &Client, format: Format) -> anyhow::Result<i32> {
    let v: serde_json::Value = client.call("GET", "/api/v1/diagnose", None)?;
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    let critical = findings.iter().any(|f| f["severity"] == "critical");
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if findings.is_empty() {
        println!("No problems found.");
    } else {
        for f in &findings {
            println!(
                "{} {}: {}",
                f["severity"].as_str().unwrap_or("?").to_uppercase(),
                f["subject"].as_str().unwrap_or(""),
                f["cause"].as_str().unwrap_or("")
            );
            for e in f["evidence"].as_array().into_iter().flatten() {
                println!("  - {}", e.as_str().unwrap_or(""));
            }
            println!("  fix: {}\n", f["fix"].as_str().unwrap_or(""));
        }
    }
    Ok(i32::from(critical))
}
