//! `berth diagnose`: the agent's findings, most severe first, each with its cause, the numbers
//! and the fix. Exit status 1 when there is a critical finding, for scripts and health checks.

use super::{args::Format, client::Client};
use crate::{api::views::DiagnoseView, diagnose::Severity};

pub fn execute_diagnose(client: &Client, format: Format) -> anyhow::Result<i32> {
    let v: DiagnoseView = client.call("GET", "/api/v1/diagnose", None)?;
    let critical = v.findings.iter().any(|f| f.severity == Severity::Critical);
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.findings.is_empty() {
        println!("No problems found.");
    } else {
        for f in &v.findings {
            let severity = serde_json::to_value(f.severity)?;
            println!(
                "{} {}: {}",
                severity.as_str().unwrap_or("?").to_uppercase(),
                f.subject,
                f.cause
            );
            for e in &f.evidence {
                println!("  - {e}");
            }
            // A fix in steps is one step per line, aligned under the first.
            let mut steps = f.fix.lines();
            println!("  fix: {}", steps.next().unwrap_or(""));
            for step in steps {
                println!("       {step}");
            }
            println!();
        }
    }
    Ok(i32::from(critical))
}
