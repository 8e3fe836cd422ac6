//! The `berth` command line: `berth agent` runs the daemon; every other verb is a client of the
//! running agent over its Unix socket. One file per verb, clap derives in [`args`].

pub mod args;
pub mod client;
mod diagnose;
mod image;
mod info;
mod inspect;
mod logs;
mod ports;
mod progress;
mod ps;
mod query;
mod run;
mod signal;
mod stats;
mod top;
mod update;

use anyhow::Context as _;

use self::args::{Cli, Command};
use self::client::Client;
use crate::{cgroup::limits::Limits, cgroup::limits::parse_bytes, config::Config};

/// Runs the parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> anyhow::Result<i32> {
    let client = Client::new(&cli.socket);
    if !matches!(cli.command, Command::Agent { .. } | Command::Shim { .. }) {
        // Client verbs end quietly when their reader goes away (`berth ps | head`), as Unix
        // tools do. The agent and the shim keep ignoring SIGPIPE: a closed socket must not
        // kill them.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Agent {
            config: path,
            print_config,
            check_config,
        } => {
            let config = match &path {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if check_config {
                match &path {
                    Some(p) => println!("{}: valid", p.display()),
                    None => println!("no --config: the built-in defaults are valid"),
                }
                return Ok(0);
            }
            if print_config {
                print!("{}", config.to_toml());
                return Ok(0);
            }
            // SAFETY: no thread exists yet; the runtime below starts the first ones.
            let notifier = unsafe { crate::notify::Notifier::take_from_env() };
            // SAFETY: as above, before any thread allocates.
            unsafe { two_malloc_arenas() };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(crate::daemon::run(config, notifier))?;
            Ok(0)
        }
        Command::Run(args) => run::execute_run(&client, *args),
        Command::Ps {
            all,
            format,
            quiet,
            filter,
        } => ps::execute_ps(&client, all, format, quiet, &filter),
        Command::Inspect { containers } => inspect::execute_inspect(&client, &containers),
        Command::Stop { time, containers } => signal::execute_stop(&client, time, &containers),
        Command::Kill { signal, containers } => signal::execute_kill(&client, &signal, &containers),
        Command::Rm { force, containers } => signal::execute_rm(&client, force, &containers),
        Command::Update { limits, containers } => {
            update::execute_update(&client, &limits, &containers)
        }
        Command::Logs { follow, container } => logs::execute_logs(&client, follow, &container),
        Command::Stats {
            no_stream,
            format,
            containers,
        } => stats::execute_stats(&client, no_stream, format, &containers),
        Command::Top {
            no_stream,
            interval,
            window,
            sort,
            top,
            filter,
        } => {
            let req = query::Request {
                window: &window,
                step: None,
                sort: &sort,
                top,
                filters: &filter,
            };
            top::execute_top(&client, &req, interval.0, no_stream)
        }
        Command::Query {
            window,
            step,
            sort,
            top,
            filter,
            format,
        } => {
            let req = query::Request {
                window: &window,
                step: step.as_deref(),
                sort: &sort,
                top,
                filters: &filter,
            };
            query::execute_query(&client, &req, format)
        }
        Command::Ports { container, format } => {
            ports::execute_ports(&client, container.as_deref(), format)
        }
        Command::Image(cmd) => image::execute_image(&client, cmd),
        Command::Pull { reference } => image::execute_pull(&client, &reference),
        Command::Info => info::execute_info(&client),
        Command::Diagnose { format } => diagnose::execute_diagnose(&client, format),
        Command::Shim { dir, adopt } => Ok(crate::runtime::shim::main(&dir, adopt)),
    }
}

/// Parses the Docker-style limit flags; errors name the flag.
pub fn parse_limits(a: &args::LimitArgs) -> anyhow::Result<Limits> {
    fn num<T: std::str::FromStr>(flag: &str, v: &Option<String>) -> anyhow::Result<Option<T>> {
        v.as_deref()
            .map(|s| {
                s.trim()
                    .parse::<T>()
                    .map_err(|_| anyhow::anyhow!("{flag} {s}: not a number"))
            })
            .transpose()
    }
    let memory = a
        .memory
        .as_deref()
        .map(|s| parse_bytes(s).map_err(|e| anyhow::anyhow!("--memory {s}: {e}")))
        .transpose()?;
    let memory_swap = match a.memory_swap.as_deref() {
        None => None,
        Some("-1") => Some(-1),
        Some(s) => Some(
            i64::try_from(parse_bytes(s).map_err(|e| anyhow::anyhow!("--memory-swap {s}: {e}"))?)
                .map_err(|_| anyhow::anyhow!("--memory-swap {s}: too large"))?,
        ),
    };
    Ok(Limits {
        memory,
        memory_swap,
        cpus: num("--cpus", &a.cpus)?,
        cpu_shares: num("--cpu-shares", &a.cpu_shares)?,
        pids: num("--pids-limit", &a.pids_limit)?,
        blkio_weight: num("--blkio-weight", &a.blkio_weight)?,
    })
}

/// `abcdef012345`: the first 12 characters of an id, as Docker shows them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// "3 seconds", "5 minutes", "2 hours", "4 days".
pub fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (n, unit) = match s {
        0..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// At most two glibc malloc arenas for the agent, unless `MALLOC_ARENA_MAX` says otherwise.
/// glibc gives threads that allocate at once arenas of their own (up to 8 per core), and the
/// agent builds each snapshot on one thread and frees the one before on another: every arena
/// then grows to the agent's working set and keeps it. Measured at 50 berth and 200 other
/// containers: four thread arenas of 7 to 8.5 MB after 5 minutes at rest, against one of
/// 8 MB with two arenas (docs/benchmarks.md, issue 14). The agent's threads seldom allocate
/// at once, so two arenas cost it no measurable wait.
///
/// # Safety
/// Before any thread is started (glibc reads the setting when a thread first allocates).
unsafe fn two_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: the caller's; mallopt only sets a parameter.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_dockers() {
        assert_eq!(ago(1.0), "1 second");
        assert_eq!(ago(59.0), "59 seconds");
        assert_eq!(ago(120.0), "2 minutes");
        assert_eq!(ago(7200.0), "2 hours");
        assert_eq!(ago(-5.0), "0 seconds");
    }

    #[test]
    fn limit_flags_parse_with_docker_units_and_name_the_flag_on_error() {
        let a = args::LimitArgs {
            memory: Some("64m".into()),
            memory_swap: Some("-1".into()),
            cpus: Some("0.5".into()),
            pids_limit: Some("20".into()),
            ..Default::default()
        };
        let l = parse_limits(&a).unwrap();
        assert_eq!(l.memory, Some(64 << 20));
        assert_eq!(l.memory_swap, Some(-1));
        assert_eq!(l.cpus, Some(0.5));
        assert_eq!(l.pids, Some(20));
        let bad = args::LimitArgs {
            cpus: Some("lots".into()),
            ..Default::default()
        };
        assert!(
            parse_limits(&bad)
                .unwrap_err()
                .to_string()
                .contains("--cpus")
        );
        let bad = args::LimitArgs {
            memory: Some("12q".into()),
            ..Default::default()
        };
        assert!(
            parse_limits(&bad)
                .unwrap_err()
                .to_string()
                .contains("--memory")
        );
    }
}
