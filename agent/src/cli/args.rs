//! Every clap derive of the `berth` binary, in one place. Doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Containers, traced with eBPF, with what port mapping costs explained."
)]
pub struct Cli {
    /// The agent's Unix socket (client verbs).
    #[arg(long, global = true, env = "BERTH_SOCKET", default_value = crate::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the agent in the foreground: containers, probes, collectors, HTTP.
    ///
    /// Example: `berth agent --config /etc/berth/berth.toml`, then
    /// `curl http://127.0.0.1:9847/metrics`.
    Agent {
        /// TOML configuration file; without it the built-in defaults apply.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print the configuration in force (defaults merged with --config) and exit.
        #[arg(long)]
        print_config: bool,
        /// Check the configuration (parse and validate --config, as the agent does at start)
        /// and exit: status 0 and one line when it is valid, else the error naming the key.
        /// Touches nothing on the host.
        ///
        /// Example: `berth agent --check-config --config deploy/berth.toml`
        #[arg(long, conflicts_with = "print_config")]
        check_config: bool,
    },
    /// Create and start a container from an image or a rootfs directory.
    ///
    /// Example: `berth run -d --name web --memory 64m --cpus 0.5 busybox:latest httpd -f`
    Run(Box<RunArgs>),
    /// List containers (running ones; -a for all).
    ///
    /// Example: `berth ps -a --format json`
    Ps {
        /// Show exited containers too.
        #[arg(short, long)]
        all: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
        /// Only containers that match, as Docker's (repeatable; all must match):
        /// `engine=docker`, `name=web` (a part of the name), `label=KEY` or `label=KEY=VALUE`,
        /// `status=running|exited|created|restarting`.
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = super::ps::Filter::parse)]
        filter: Vec<super::ps::Filter>,
    },
    /// Show everything berth knows about containers, as JSON.
    ///
    /// Example: `berth inspect web`
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the timeout.
    ///
    /// Example: `berth stop -t 5 web`
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers (default KILL).
    ///
    /// Example: `berth kill -s HUP web`
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers (-f stops running ones first).
    ///
    /// Example: `berth rm -f web`
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Change the limits of containers, running ones at once.
    ///
    /// Example: `berth update --memory 128m --cpus 1 web`
    Update {
        #[command(flatten)]
        limits: LimitArgs,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a container's output (stdout and stderr).
    ///
    /// Example: `berth logs -f web`
    Logs {
        /// Keep streaming until the container exits.
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Resource usage of containers, from their cgroups.
    ///
    /// Example: `berth stats --no-stream web`
    Stats {
        /// Print once instead of refreshing every second.
        #[arg(long)]
        no_stream: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Containers (default: all running).
        containers: Vec<String>,
    },
    /// A live view of what each container costs, like `docker stats` with the costs berth
    /// measures: CPU, memory, pids, network, syscalls per second, netfilter µs per packet and
    /// new flows per second, each over the last --window, redrawn every --interval.
    ///
    /// Example: `berth top --sort syscalls --filter engine=docker`
    Top {
        /// Print once instead of refreshing.
        #[arg(long)]
        no_stream: bool,
        /// How often to redraw (e.g. 2s, 500ms).
        #[arg(long, default_value = "2s")]
        interval: crate::config::HumanDuration,
        /// What each figure averages over (e.g. 5s, 1m).
        #[arg(long, default_value = "5s")]
        window: String,
        /// Order by a series, highest first: cpu, memory, pids, rx, tx, syscalls, netfilter,
        /// flows (or the API's series names).
        #[arg(long, default_value = "cpu")]
        sort: String,
        /// Show only the first N containers.
        #[arg(long)]
        top: Option<usize>,
        /// Only containers that match (repeatable): `engine=docker`, `name=web` (a part of
        /// the name), `container=ID` (id, name or unique id prefix).
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = super::query::SeriesFilter::parse)]
        filter: Vec<super::query::SeriesFilter>,
    },
    /// Series over a window from the agent's history (`GET /api/v1/query`): per container and
    /// for the host, one value per step; as JSON, or a table of each container's means.
    ///
    /// Example: `berth query --window 10m --step 30s --sort netfilter --top 5 --format json`
    Query {
        /// How far back (e.g. 300s, 10m; at most 60m).
        #[arg(long, default_value = "300s")]
        window: String,
        /// Spacing of the points (default: the history's resolution for that window).
        #[arg(long)]
        step: Option<String>,
        /// Order by a series' mean, highest first: cpu, memory, pids, rx, tx, syscalls,
        /// netfilter, flows (or the API's series names).
        #[arg(long, default_value = "cpu")]
        sort: String,
        /// Keep only the first N containers.
        #[arg(long)]
        top: Option<usize>,
        /// Only containers that match (repeatable): `engine=docker`, `name=web`,
        /// `container=ID`.
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = super::query::SeriesFilter::parse)]
        filter: Vec<super::query::SeriesFilter>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Published ports with their backend and the container address.
    ///
    /// Example: `berth ports media`
    Ports {
        /// Only this container.
        container: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Pull an image from a registry (Docker's reference syntax: `name[:tag]`,
    /// `host[:port]/path[:tag]`, `name@sha256:...`; `docker.io/library/` implied).
    ///
    /// Example: `berth pull 127.0.0.1:5000/media/app:v2`
    Pull { reference: String },
    /// Manage images (import archives, list, remove; `berth pull` fetches from registries).
    #[command(subcommand)]
    Image(ImageCommand),
    /// What costs this host CPU or breaks its containers, with the cause, the numbers and the
    /// fix: per-port iptables rules, userland proxies, the conntrack table, OOM kills, restart
    /// loops, probes down.
    ///
    /// Example: `berth diagnose`
    Diagnose {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The agent's system view: kernel, cgroups, OCI runtime, probes.
    ///
    /// Example: `berth info`
    Info,
    /// Per-container shim (started by the agent). With --adopt, it watches a container that
    /// still runs after its first shim was lost, instead of starting one.
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        adopt: bool,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a `docker save` archive or an OCI image layout tar (optionally gzipped).
    ///
    /// Example: `berth image import busybox.tar --name busybox:latest`
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove an image no container uses.
    Rm { image: String },
    /// Show images as JSON (id, names, config, size), by name, id or id prefix.
    ///
    /// Example: `berth image inspect 127.0.0.1:5000/media/app:v2`
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// `berth run --pull`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    Missing,
    Never,
}

#[derive(Args, Default)]
pub struct LimitArgs {
    /// Memory limit, e.g. 64m, 1g.
    #[arg(short = 'm', long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory + swap limit (-1: unlimited swap).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPUs, e.g. 0.5.
    #[arg(long, allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Relative CPU weight (cgroup v1 shares).
    #[arg(short = 'c', long, allow_hyphen_values = true)]
    pub cpu_shares: Option<String>,
    /// Maximum number of processes (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<String>,
    /// Block IO weight, 10 to 1000.
    #[arg(long, allow_hyphen_values = true)]
    pub blkio_weight: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background and print the id.
    #[arg(short, long)]
    pub detach: bool,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Restart policy: no, on-failure[:N], always.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Network mode: bridge (default), host, none.
    #[arg(long)]
    pub network: Option<crate::net::NetworkMode>,
    /// Publish ports: [IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp] (repeatable), e.g.
    /// `-p 40000-59999:40000-59999/udp`.
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Port-mapping backend: nft-map (one map, flat cost), ebpf (eBPF programs past netfilter
    /// and conntrack: host-networking cost) or iptables (one rule per port, Docker's way, to
    /// reproduce the problem).
    #[arg(long)]
    pub port_backend: Option<crate::net::portmap::BackendKind>,
    /// Security options, as Docker's (repeatable): `seccomp=unconfined` (no filter),
    /// `seccomp=builtin` (moby's default profile, the default) or `seccomp=PATH` (a profile
    /// file in moby's format, read here and sent to the agent), e.g.
    /// `--security-opt seccomp=./strict.json`.
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Remove the container when it exits, as `docker run --rm` (the agent removes it, also
    /// when it exits while the agent is down). Not with --restart.
    #[arg(long)]
    pub rm: bool,
    /// When to pull the image from its registry, as Docker's: `missing` (when no stored image
    /// matches the reference), `always`, `never`.
    #[arg(long, value_enum, default_value_t)]
    pub pull: PullPolicy,
    /// Rootfs directory (an existing directory wins), else an image reference (pulled per
    /// --pull).
    pub image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}
