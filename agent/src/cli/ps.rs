//! `berth ps`: containers as a table (Docker's columns) or JSON.

use super::{ago, args::Format, client::Client, short, table};
use crate::{
    api::views::ContainerSummary,
    model::{Engine, Status},
    runtime::store::now_secs,
};

/// One `--filter KEY=VALUE` of `berth ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Engine(String),
    /// A part of the name.
    Name(String),
    /// A label key, and its value when given.
    Label(String, Option<String>),
    Status(Status),
}

/// The value of an `engine=` filter (`ps`, `top`, `query`): one of the engines' names.
pub fn engine_filter(value: &str) -> Result<String, String> {
    let engines: Vec<&str> = Engine::ALL.iter().map(|e| e.name()).collect();
    if engines.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "engine={value:?}: expected one of {}",
            engines.join(", ")
        ))
    }
}

impl Filter {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KEY=VALUE, e.g. engine=docker"))?;
        match key {
            "engine" => engine_filter(value).map(Filter::Engine),
            "name" => Ok(Filter::Name(value.to_owned())),
            "label" if !value.is_empty() => Ok(match value.split_once('=') {
                Some((k, v)) => Filter::Label(k.to_owned(), Some(v.to_owned())),
                None => Filter::Label(value.to_owned(), None),
            }),
            "status" => serde_json::from_value(serde_json::Value::String(value.to_owned()))
                .map(Filter::Status)
                .map_err(|_| {
                    format!(
                        "status={value:?}: expected creating, running, restarting, exited or removing"
                    )
                }),
            _ => Err(format!(
                "{s:?}: unknown filter; use engine=, name=, label= or status="
            )),
        }
    }

    fn matches(&self, c: &ContainerSummary) -> bool {
        match self {
            Filter::Engine(e) => {
                let engine = if c.engine.is_empty() {
                    "berth"
                } else {
                    &c.engine
                };
                engine == e
            }
            Filter::Name(n) => c.name.contains(n.as_str()),
            Filter::Label(k, v) => c
                .labels
                .get(k)
                .is_some_and(|have| v.as_ref().is_none_or(|v| v == have)),
            Filter::Status(s) => c.status == *s,
        }
    }
}

pub fn execute_ps(
    client: &Client,
    all: bool,
    format: Format,
    quiet: bool,
    filters: &[Filter],
) -> anyhow::Result<i32> {
    let path = format!("/api/v1/containers?all={all}");
    let keep = |c: &ContainerSummary| filters.iter().all(|f| f.matches(c));
    if format == Format::Json && !quiet {
        // Everything the agent sends, as it sends it (only the matching containers).
        let raw: Vec<serde_json::Value> = client.call("GET", &path, None)?;
        let kept: Vec<&serde_json::Value> = raw
            .iter()
            .filter(|v| {
                filters.is_empty()
                    || serde_json::from_value::<ContainerSummary>((*v).clone())
                        .is_ok_and(|c| keep(&c))
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&kept)?);
        return Ok(0);
    }
    let mut list: Vec<ContainerSummary> = client.call("GET", &path, None)?;
    list.retain(keep);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_as_docker_writes_them_and_bad_ones_are_named() {
        assert_eq!(
            Filter::parse("engine=docker"),
            Ok(Filter::Engine("docker".into()))
        );
        assert_eq!(
            Filter::parse("label=a=b=c"),
            Ok(Filter::Label("a".into(), Some("b=c".into())))
        );
        assert_eq!(
            Filter::parse("label=a"),
            Ok(Filter::Label("a".into(), None))
        );
        assert_eq!(
            Filter::parse("status=exited"),
            Ok(Filter::Status(Status::Exited))
        );
        for bad in ["engine", "engine=rkt", "label=", "status=up", "ancestor=x"] {
            let e = Filter::parse(bad).unwrap_err();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn every_filter_must_match() {
        let c: ContainerSummary = serde_json::from_value(serde_json::json!({
            "id": "a".repeat(64), "name": "media-1", "image": "bb:1", "status": "running",
            "state": serde_json::to_value(crate::model::ContainerState::default()).unwrap(),
            "created_at": 0.0, "args": [], "network": {},
            "engine": "docker", "labels": {"tier": "rtc"}
        }))
        .unwrap();
        let m = |f: &[&str]| {
            f.iter()
                .map(|f| Filter::parse(f).unwrap())
                .all(|f| f.matches(&c))
        };
        assert!(m(&[
            "engine=docker",
            "name=media",
            "label=tier",
            "label=tier=rtc"
        ]));
        assert!(!m(&["engine=berth"]));
        assert!(!m(&["engine=docker", "label=tier=web"]));
        assert!(!m(&["status=exited"]));
    }
}
