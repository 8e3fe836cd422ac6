//! `berth logs [-f]`: the container's output, streamed while it runs with -f.

use std::io::Write as _;

use super::client::{Client, ClientError, segment};

pub fn execute_logs(client: &Client, follow: bool, container: &str) -> anyhow::Result<i32> {
    let path = format!(
        "/api/v1/containers/{}/logs?follow={follow}",
        segment(container)
    );
    let mut out = std::io::stdout();
    let mut body = Vec::new();
    let status = client.stream("GET", &path, None, |b| {
        if body.len() < 4096 {
            body.extend_from_slice(b);
        }
        let _ = out.write_all(b);
        let _ = out.flush();
    });
    match status {
        Ok(s) if (200..300).contains(&s) => Ok(0),
        Ok(s) => Err(ClientError::Api {
            status: s,
            message: super::client::error_message(&body).unwrap_or_default(),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}
