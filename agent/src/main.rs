//! `berth`: the agent daemon and its client verbs (see `cli/`).

use std::{io::IsTerminal as _, process::ExitCode};

use berth::cli::{self, args::Cli};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli::execute(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::from(125)
        }
    }
}

/// Logs to stderr: `BERTH_LOG` (EnvFilter syntax) or `berth=info`; colors only on a terminal.
/// When stderr is journald's stream (`JOURNAL_STREAM` names its device and inode, as systemd
/// sets it for `StandardError=journal`), lines carry no timestamp (the journal stamps each
/// entry) and start with a syslog priority prefix (`<3>` error .. `<7>` debug) that journald
/// turns into the entry's PRIORITY, so `journalctl -p warning -u berth` works.
fn init_tracing() {
    let filter =
        EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("berth=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        builder
            .event_format(journal::SyslogPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// `JOURNAL_STREAM` is `DEVICE:INODE` of the journal stream; it is only ours when stderr is
/// still that stream (not redirected by the operator or a wrapper).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // /proc/self/fd/2 resolves to the open file itself, sockets included.
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    var.to_str() == Some(format!("{}:{}", meta.dev(), meta.ino()).as_str())
}

mod journal {
    use std::fmt;

    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::{
        fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
        registry::LookupSpan,
    };

    /// Prefixes each event with its sd-daemon(3) priority, then formats it as `F` does.
    pub struct SyslogPrefix<F>(pub F);

    impl<S, N, F> FormatEvent<S, N> for SyslogPrefix<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let priority = match *event.metadata().level() {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            write!(writer, "<{priority}>")?;
            self.0.format_event(ctx, writer, event)
        }
    }
}
