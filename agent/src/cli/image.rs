//! `berth image import|ls|rm`.

use super::{
    args::{Format, ImageCommand},
    client::{Client, segment},
    short, table,
};

pub fn execute_image(client: &Client, cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Import { file, name } => {
            let path = std::fs::canonicalize(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let body = serde_json::json!({ "path": path, "name": name });
            let image: serde_json::Value =
                client.call("POST", "/api/v1/images/import", Some(&body))?;
            println!("{}", image["id"].as_str().unwrap_or_default());
            Ok(0)
        }
        ImageCommand::Ls { format } => {
            let list: Vec<serde_json::Value> = client.call("GET", "/api/v1/images", None)?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            let rows = list
                .iter()
                .map(|i| {
                    let names: Vec<&str> = i["names"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    vec![
                        if names.is_empty() {
                            "<none>".to_owned()
                        } else {
                            names.join(",")
                        },
                        short(i["id"].as_str().unwrap_or_default()).to_owned(),
                        format!("{:.1}MB", i["size_bytes"].as_f64().unwrap_or(0.0) / 1e6),
                    ]
                })
                .collect::<Vec<_>>();
            table(&["NAMES", "IMAGE ID", "SIZE"], &rows);
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
