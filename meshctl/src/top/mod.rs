//! `meshctl top`: a live terminal view of the mesh's traffic, refreshed every `--interval`:
//! one row per node (its ztunnel's CPU, memory, active connections, connections/s, bytes/s,
//! denials/s) and with `--workloads` one row per workload (connections, bytes/s and, when a
//! waypoint is in its path, requests/s, success rate, p50/p99), each with a sparkline of the
//! last minute. Read straight from the components' `/metrics` on the local cluster (two
//! successive scrapes make a rate), or from a Prometheus (`--prometheus URL`). `-o json`
//! prints one snapshot and exits. Keys: `s` cycles the sort, `w` shows or hides workloads,
//! `q` quits.

mod expo;
mod source;
mod stats;
mod ui;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::cluster::state::StateDir;
use source::Metrics;
use stats::{Round, Snapshot};

/// Output of `top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopOutput {
    /// The live terminal view.
    Tui,
    /// One snapshot as JSON, then exit.
    Json,
}

/// Flags of `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Also one row per workload.
    #[arg(short = 'w', long)]
    pub workloads: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Read from this Prometheus (`http://host:port`) instead of the local cluster's
    /// components (rates over its last minute).
    #[arg(long)]
    pub prometheus: Option<String>,
    /// `tui` (live) or `json` (one snapshot).
    #[arg(short = 'o', long, value_enum, default_value_t = TopOutput::Tui)]
    pub output: TopOutput,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.2..=60.0).contains(&v) => Ok(v),
        _ => Err("an interval between 0.2 and 60 seconds".into()),
    }
}

/// Takes rounds and turns each pair into a [`Snapshot`].
pub struct Sampler {
    metrics: Metrics,
    previous: Option<Round>,
}

impl Sampler {
    fn new(metrics: Metrics) -> Self {
        Sampler {
            metrics,
            previous: None,
        }
    }

    /// Scrapes now; the snapshot once two rounds are known, and the targets that failed.
    pub fn sample(&mut self) -> (Option<Snapshot>, Vec<String>) {
        let (mut rounds, errors) = self.metrics.rounds();
        if self.metrics.paired() {
            let snapshot = (rounds.len() == 2).then(|| stats::snapshot(&rounds[0], &rounds[1]));
            return (snapshot, errors);
        }
        let Some(round) = rounds.pop() else {
            return (None, errors);
        };
        let snapshot = self
            .previous
            .as_ref()
            .map(|prev| stats::snapshot(prev, &round));
        self.previous = Some(round);
        (snapshot, errors)
    }
}

/// `meshctl top`.
pub fn run(state: &StateDir, args: &TopArgs) -> anyhow::Result<()> {
    let mut sampler = Sampler::new(Metrics::new(state, args.prometheus.as_deref())?);
    let interval = Duration::from_secs_f64(args.interval);
    match args.output {
        TopOutput::Json => {
            let (mut snapshot, mut errors) = sampler.sample();
            if snapshot.is_none() {
                std::thread::sleep(interval);
                (snapshot, errors) = sampler.sample();
            }
            for e in &errors {
                progress!("meshctl top: {e}");
            }
            // Scripts get every row: nodes and workloads.
            let snapshot = snapshot.context("no metrics could be read")?;
            out!("{}", serde_json::to_string_pretty(&snapshot)?);
            Ok(())
        }
        TopOutput::Tui => ui::run(&mut sampler, interval, args.workloads),
    }
}
