//! `berth image import|ls|inspect|rm` and `berth pull`.

use super::{
    args::{Format, ImageCommand},
    client::{Client, ClientError, error_message, segment},
    short, table,
};
use crate::model::{Image, PullEvent};

pub fn execute_image(client: &Client, cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Import { file, name } => {
            let path = std::fs::canonicalize(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let body = serde_json::json!({ "path": path, "name": name });
            let image: Image = client.call("POST", "/api/v1/images/import", Some(&body))?;
            println!("{}", image.id);
            Ok(0)
        }
        ImageCommand::Ls { format } => {
            let list: Vec<Image> = client.call("GET", "/api/v1/images", None)?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            let rows = list
                .iter()
                .map(|i| {
                    vec![
                        if i.names.is_empty() {
                            "<none>".to_owned()
                        } else {
                            i.names.join(",")
                        },
                        short(&i.id).to_owned(),
                        format!("{:.1}MB", i.size_bytes as f64 / 1e6),
                    ]
                })
                .collect::<Vec<_>>();
            table(&["NAMES", "IMAGE ID", "SIZE"], &rows);
            Ok(0)
        }
        ImageCommand::Inspect { images } => {
            let list: Vec<Image> = client.call("GET", "/api/v1/images", None)?;
            let ids: Vec<String> = {
                let mut ids: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
                ids.sort();
                ids
            };
            let names = list
                .iter()
                .flat_map(|i| i.names.iter().map(|n| (n.clone(), i.id.clone())))
                .collect();
            let mut found = Vec::new();
            for reference in &images {
                let id = crate::image::resolve_reference(reference, &ids, &names)?;
                found.extend(list.iter().find(|i| i.id == id));
            }
            println!("{}", serde_json::to_string_pretty(&found)?);
            Ok(0)
        }
        ImageCommand::Rm { image } => {
            let _: serde_json::Value = client.call(
                "DELETE",
                &format!("/api/v1/images/{}", segment(&image)),
                None,
            )?;
            println!("{image}");
            Ok(0)
        }
    }
}

/// `berth pull REF`: the agent pulls (it owns the store); prints the image id, as
/// `image import` does.
pub fn execute_pull(client: &Client, reference: &str) -> anyhow::Result<i32> {
    let image = pull(client, reference, "always")?;
    eprintln!("{reference}: pulled {}", short(&image.id));
    println!("{}", image.id);
    Ok(0)
}

/// Asks the agent to pull `reference` (`policy`: `always` or `missing`), showing its progress
/// per layer on stderr; its errors name the reference (and the digest or registry at fault)
/// already.
pub fn pull(client: &Client, reference: &str, policy: &str) -> anyhow::Result<Image> {
    let body = serde_json::json!({ "reference": reference, "policy": policy, "progress": true });
    let mut display = super::progress::Display::new(reference);
    let mut pending = Vec::new();
    let mut last: Option<PullEvent> = None;
    let mut bad: Option<String> = None;
    let status = client.stream("POST", "/api/v1/images/pull", Some(&body), |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<PullEvent>(&line) {
                Ok(event) => {
                    display.event(&event);
                    last = Some(event);
                }
                Err(_) => bad = Some(String::from_utf8_lossy(&line).trim().to_owned()),
            }
        }
    })?;
    let rest = String::from_utf8_lossy(&pending).trim().to_owned();
    if !(200..300).contains(&status) {
        let message = error_message(rest.as_bytes()).unwrap_or(rest);
        return Err(ClientError::Api { status, message }.into());
    }
    // `policy: missing` of a stored image: one JSON image, not a stream.
    if last.is_none()
        && let Ok(image) = serde_json::from_str::<Image>(&rest)
    {
        return Ok(image);
    }
    match last {
        Some(PullEvent::Pulled { image }) => Ok(image),
        Some(PullEvent::Error { error }) => Err(anyhow::anyhow!(error)),
        _ => Err(ClientError::Protocol(format!(
            "the pull stream ended without a result{}",
            bad.map(|b| format!(" (unreadable line {b:?})"))
                .unwrap_or_default()
        ))
        .into()),
    }
}
