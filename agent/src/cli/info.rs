//! `berth info`: the agent's system view as JSON.

use super::client::Client;

pub fn execute_info(client: &Client) -> anyhow::Result<i32> {
    let v: serde_json::Value = client.call("GET", "/api/v1/system", None)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}
