//! `canopy run`: the binary glue around `canopy_controller::daemon`. Compiles the policy once
//! through the daemon's loader and hands that plan to the daemon (its `[daemon]` settings give
//! the socket, metrics address and mode; flags override them), sets up logging
//! (journald-friendly `<N>` priority prefixes when stderr is the journal), starts the tokio
//! runtime and runs the daemon until SIGTERM/SIGINT. All daemon logic lives in the crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use canopy_controller::daemon::{Daemon, DaemonOptions, MetricsPeers};
use canopy_controller::policy_adapter::loader;
use canopy_policy::DaemonMode;

/// Arguments of `canopy run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy files or directories (policy.toml + policy.d/*.toml); default /etc/canopy.
    #[arg(long = "policy")]
    pub policy: Vec<PathBuf>,
    /// Policy files or directories, as positional arguments (same as --policy).
    pub paths: Vec<PathBuf>,
    /// Backend: auto (scx when the kernel has sched_ext sub-schedulers), scx, or fallback.
    /// Default: the policy's `daemon.mode`.
    #[arg(long)]
    pub mode: Option<DaemonMode>,
    /// Serve Prometheus metrics on this address (`GET /metrics`). Default: the policy's
    /// `daemon.metrics_address`.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Answer metrics scrapes from any peer, not only loopback ones (a fleet's Prometheus
    /// scraping the node's address). Without it, other peers' connections are closed at once.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Control socket path. Default: the policy's `daemon.socket_path`.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// cgroup2 mount (detected from the mount table when absent).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Manage only this cgroup subtree (relative to the cgroup2 root), e.g. for a staged rollout.
    #[arg(long)]
    pub scope: Option<String>,
    /// Fallback mode: where the original attributes of changed tasks and groups are recorded,
    /// so a restart after SIGKILL restores or re-adopts them.
    #[arg(long, default_value = canopy_controller::state_file::DEFAULT_PATH)]
    pub state_file: PathBuf,
    /// scx mode: how long to wait for the root scheduler to load and enable, in seconds (a real
    /// machine needs under one; an emulated one on a busy host, minutes). `auto` falls back to
    /// the fallback mode after it; systemd is asked for the extra start time meanwhile.
    #[arg(long, default_value_t = crate::scheduler::daemon_link::DEFAULT_START_TIMEOUT.as_secs())]
    pub scheduler_start_timeout_s: u64,
}

/// Logging: plain lines for a terminal; `<N>`-prefixed lines without timestamps when stderr is
/// connected to the journal (systemd sets $JOURNAL_STREAM), so journald keeps the levels.
fn init_logging() {
    use tracing_subscriber::fmt::format::{FmtSpan, Writer};
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::EnvFilter;

    struct Journald;
    impl<S, N> FormatEvent<S, N> for Journald
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> std::fmt::Result {
            let prio = match *event.metadata().level() {
                tracing::Level::ERROR => 3,
                tracing::Level::WARN => 4,
                tracing::Level::INFO => 6,
                _ => 7,
            };
            write!(w, "<{prio}>")?;
            ctx.field_format().format_fields(w.by_ref(), event)?;
            writeln!(w)
        }
    }

    let filter = EnvFilter::try_from_env("CANOPY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .event_format(Journald)
            .init();
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_span_events(FmtSpan::NONE)
            .init();
    }
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT.
pub fn run(mut args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    args.policy.append(&mut args.paths);
    if args.policy.is_empty() {
        args.policy.push(PathBuf::from("/etc/canopy"));
    }
    // The one compile of this start: the daemon starts from this plan (and its `[daemon]`
    // settings are read from it); reloads go through the same loader.
    let loader = loader(args.policy.clone());
    let plan = loader().map_err(|e| anyhow!("the policy does not compile:\n{e}"))?;
    let settings = plan
        .compiled()
        .map(|compiled| compiled.daemon().clone())
        .context("the policy loader returned no compiled policy")?;
    let mode = args.mode.unwrap_or(settings.mode);
    let socket = args
        .socket
        .unwrap_or_else(|| PathBuf::from(&settings.socket_path));
    let metrics = match (args.metrics_listen, &settings.metrics_address) {
        (Some(a), _) => Some(a),
        (None, Some(a)) => Some(
            a.parse()
                .with_context(|| format!("policy daemon.metrics_address {a:?}"))?,
        ),
        (None, None) => None,
    };
    let mut opts = DaemonOptions::new(loader, socket);
    opts.initial_plan = Some(plan);
    opts.watch_paths = args.policy;
    opts.mode = mode;
    opts.metrics_listen = metrics;
    opts.metrics_peers = if args.metrics_allow_remote {
        MetricsPeers::Any
    } else {
        MetricsPeers::Loopback
    };
    opts.cgroup_root = args.cgroup_root;
    opts.cgroup_scope = args.scope;
    opts.state_file = Some(args.state_file);
    // scx mode: the schedulers run on a thread of their own; the daemon writes their maps.
    let schedulers = crate::scheduler::daemon_link::SchedulerThread::new(
        std::time::Duration::from_secs(args.scheduler_start_timeout_s),
    );
    opts.scx = Some(schedulers.factory());
    // Both modes: cgroup moves through BPF where the kernel allows it (inotify otherwise).
    opts.move_watcher = Some(crate::scheduler::move_watch::factory());
    // One thread polls every source: the controller loop runs where the I/O driver does, so a
    // proc event wakes one thread, not a worker that then wakes the loop. With one worker the
    // frame benchmark's fork-heavy build (about 120 events a second) cost the daemon 1.6 ms of
    // CPU per event under TCG, a third of it on that worker; on one thread 1.1 ms
    // (docs/scheduler-benchmark.md, 2026-12-06 09:27).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("canopy-daemon")
        .build()
        .context("starting the async runtime")?;
    let report =
        rt.block_on(async { Daemon::start(opts).await?.run(std::future::pending()).await });
    // Unload the schedulers (every task back to the fair scheduler) whatever the daemon's end.
    schedulers.stop();
    let report = report.context("canopy daemon")?;
    if !report.failures.is_empty() {
        for f in &report.failures {
            tracing::warn!("restore failed: {f}");
        }
    }
    Ok(())
}
