//! `berth stop`, `berth kill` and `berth rm`: one request per container, each named on success
//! as Docker prints them; errors name the container and set a non-zero exit.

use super::client::{Client, segment};

fn each(containers: &[String], mut f: impl FnMut(&str) -> anyhow::Result<()>) -> i32 {
    let mut code = 0;
    for c in containers {
        match f(c) {
            Ok(()) => println!("{c}"),
            Err(e) => {
                eprintln!("berth: error: {e}");
                code = 1;
            }
        }
    }
    code
}

pub fn execute_stop(client: &Client, time: u64, containers: &[String]) -> anyhow::Result<i32> {
    Ok(each(containers, |c| {
        client.call::<serde_json::Value>(
            "POST",
            &format!("/api/v1/containers/{}/stop?t={time}", segment(c)),
            None,
        )?;
        Ok(())
    }))
}

pub fn execute_kill(client: &Client, signal: &str, containers: &[String]) -> anyhow::Result<i32> {
    Ok(each(containers, |c| {
        client.call::<serde_json::Value>(
            "POST",
            &format!(
                "/api/v1/containers/{}/kill?signal={}",
                segment(c),
                segment(signal)
            ),
            None,
        )?;
        Ok(())
    }))
}

pub fn execute_rm(client: &Client, force: bool, containers: &[String]) -> anyhow::Result<i32> {
    Ok(each(containers, |c| {
        client.call::<serde_json::Value>(
            "DELETE",
            &format!("/api/v1/containers/{}?force={force}", segment(c)),
            None,
        )?;
        Ok(())
    }))
}
