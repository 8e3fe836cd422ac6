//! `berth inspect`: everything the agent knows about containers, as a JSON array.

use super::client::{Client, segment};

pub fn execute_inspect(client: &Client, containers: &[String]) -> anyhow::Result<i32> {
    let mut out = Vec::new();
    let mut code = 0;
    for c in containers {
        match client.call::<serde_json::Value>(
            "GET",
            &format!("/api/v1/containers/{}", segment(c)),
            None,
        ) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("berth: error: {e}");
                code = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}
