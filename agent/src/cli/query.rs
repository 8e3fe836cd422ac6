//! `berth query`: the agent's series over a window (`GET /api/v1/query`), as the JSON the agent
//! sends or as a table of each container's means. `berth top` (`top.rs`) draws the same table
//! live.

use super::{args::Format, client::Client, table};
use crate::{
    cli::client::segment,
    history::query::{ContainerSeries, QueryView, mean},
};

/// `--filter KEY=VALUE` of `berth top` and `berth query`: the API's filter parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesFilter {
    Engine(String),
    /// A part of the name.
    Name(String),
    /// One container: id, name or unique id prefix.
    Container(String),
}

impl SeriesFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KEY=VALUE, e.g. engine=docker"))?;
        match key {
            "engine" => super::ps::engine_filter(value).map(Self::Engine),
            "name" => Ok(Self::Name(value.to_owned())),
            "container" => Ok(Self::Container(value.to_owned())),
            _ => Err(format!("{key:?}: filter on engine=, name= or container=")),
        }
    }
}

/// What the table and the request are built from.
pub struct Request<'a> {
    pub window: &'a str,
    pub step: Option<&'a str>,
    pub sort: &'a str,
    pub top: Option<usize>,
    pub filters: &'a [SeriesFilter],
}

impl Request<'_> {
    /// The path and query string of `GET /api/v1/query`.
    pub fn path(&self) -> String {
        let mut q = vec![
            format!("window={}", segment(self.window)),
            format!("sort={}", segment(self.sort)),
        ];
        if let Some(step) = self.step {
            q.push(format!("step={}", segment(step)));
        }
        if let Some(top) = self.top {
            q.push(format!("top={top}"));
        }
        for f in self.filters {
            q.push(match f {
                SeriesFilter::Engine(e) => format!("engine={}", segment(e)),
                SeriesFilter::Name(n) => format!("name={}", segment(n)),
                SeriesFilter::Container(c) => format!("container={}", segment(c)),
            });
        }
        format!("/api/v1/query?{}", q.join("&"))
    }
}

pub fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1}{}", units[i])
}

pub const HEADER: [&str; 10] = [
    "NAME",
    "ENGINE",
    "CPU %",
    "MEM",
    "PIDS",
    "NET RX/s",
    "NET TX/s",
    "SYSCALLS/s",
    "NF µs/pkt",
    "NEW FLOWS/s",
];

/// One row per container: rates as their mean over the window, memory and pids as last
/// known; `--` where the window knows nothing.
pub fn rows(view: &QueryView) -> Vec<Vec<String>> {
    view.containers.iter().map(row).collect()
}

fn row(c: &ContainerSeries) -> Vec<String> {
    let s = &c.series;
    let last = |v: &[Option<f64>]| v.iter().rev().flatten().next().copied();
    let show = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "--".to_owned(), f);
    vec![
        c.name.clone(),
        c.engine.name().to_owned(),
        show(mean(&s.cpu_cores), &|v| format!("{:.2}%", v * 100.0)),
        show(last(&s.memory_bytes), &human_bytes),
        show(last(&s.pids), &|v| format!("{v:.0}")),
        show(mean(&s.net_rx_bytes_per_second), &human_bytes),
        show(mean(&s.net_tx_bytes_per_second), &human_bytes),
        show(mean(&s.syscalls_per_second), &|v| format!("{v:.0}")),
        show(mean(&s.netfilter_us_per_packet), &|v| format!("{v:.1}")),
        show(mean(&s.new_flows_per_second), &|v| format!("{v:.1}")),
    ]
}

pub fn execute_query(client: &Client, req: &Request<'_>, format: Format) -> anyhow::Result<i32> {
    let path = req.path();
    if format == Format::Json {
        // What the agent sends, as it sends it.
        let raw: serde_json::Value = client.call("GET", &path, None)?;
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(0);
    }
    let view: QueryView = client.call("GET", &path, None)?;
    table(&HEADER, &rows(&view));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_flags_become_the_api_s_parameters() {
        let filters: Vec<SeriesFilter> = ["engine=docker", "name=web app", "container=abc"]
            .iter()
            .map(|f| SeriesFilter::parse(f).unwrap())
            .collect();
        let req = Request {
            window: "10m",
            step: Some("30s"),
            sort: "syscalls",
            top: Some(5),
            filters: &filters,
        };
        assert_eq!(
            req.path(),
            "/api/v1/query?window=10m&sort=syscalls&step=30s&top=5&engine=docker&name=web%20app&container=abc"
        );
        assert!(
            SeriesFilter::parse("engine=rkt")
                .unwrap_err()
                .contains("engine=")
        );
        assert!(
            SeriesFilter::parse("label=x")
                .unwrap_err()
                .contains("engine=")
        );
        assert!(
            SeriesFilter::parse("name")
                .unwrap_err()
                .contains("KEY=VALUE")
        );
    }
}
