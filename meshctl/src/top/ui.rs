//! The terminal view of `meshctl top` (ratatui on crossterm): a title line, the nodes' table,
//! the workloads' table, and a footer with the keys and the targets that did not answer.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use super::stats::{NodeRow, Snapshot, WorkloadRow};
use super::Sampler;
use crate::debug::bytes;

/// Samples kept for the sparklines: a minute at the default 2 s interval.
const HISTORY: usize = 30;

/// What the rows are sorted by (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Node or workload name.
    Name,
    /// Connections opened per second, most first.
    Connections,
    /// Active connections, most first.
    Active,
    /// Bytes per second (in + out), most first.
    Bytes,
    /// Requests per second, most first.
    Requests,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Name => Sort::Connections,
            Sort::Connections => Sort::Active,
            Sort::Active => Sort::Bytes,
            Sort::Bytes => Sort::Requests,
            Sort::Requests => Sort::Name,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Connections => "conn/s",
            Sort::Active => "active",
            Sort::Bytes => "bytes/s",
            Sort::Requests => "req/s",
        }
    }
}

/// Everything the screen shows.
pub struct View {
    snapshot: Option<Snapshot>,
    errors: Vec<String>,
    sort: Sort,
    workloads: bool,
    /// Bytes/s (in + out) per row key, oldest first.
    history: BTreeMap<String, VecDeque<f64>>,
}

impl View {
    fn new(workloads: bool) -> Self {
        View {
            snapshot: None,
            errors: Vec::new(),
            sort: Sort::Name,
            workloads,
            history: BTreeMap::new(),
        }
    }

    fn update(&mut self, snapshot: Option<Snapshot>, errors: Vec<String>) {
        self.errors = errors;
        let Some(s) = snapshot else {
            return;
        };
        let mut seen = Vec::new();
        for n in &s.nodes {
            seen.push((
                format!("node/{}", n.node),
                n.bytes_in_per_s + n.bytes_out_per_s,
            ));
        }
        for w in &s.workloads {
            seen.push((
                format!("workload/{}/{}", w.namespace, w.workload),
                w.bytes_in_per_s + w.bytes_out_per_s,
            ));
        }
        for (key, value) in seen {
            let h = self.history.entry(key).or_default();
            h.push_back(value);
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
        self.snapshot = Some(s);
    }
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub fn run(sampler: &mut Sampler, interval: Duration, workloads: bool) -> anyhow::Result<()> {
    let mut view = View::new(workloads);
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                let (snapshot, errors) = sampler.sample();
                view.update(snapshot, errors);
                next = Instant::now() + interval;
            }
            terminal.draw(|f| draw(f, &view))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(key) = event::read()? {
                    if key.kind != KeyEventKind::Press {
                        continue;
                    }
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                            return Ok(())
                        }
                        KeyCode::Char('s') => view.sort = view.sort.next(),
                        KeyCode::Char('w') => view.workloads = !view.workloads,
                        _ => {}
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

/// A sparkline of `values` scaled to their maximum.
pub fn spark(values: &VecDeque<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn rate(v: f64) -> String {
    format!("{v:.1}")
}

fn byte_rate(v: f64) -> String {
    format!("{}/s", bytes(v.max(0.0) as u64))
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".to_string(), f)
}

fn sort_nodes(rows: &mut [NodeRow], sort: Sort) {
    let key = |n: &NodeRow| match sort {
        Sort::Name | Sort::Requests => 0.0,
        Sort::Connections => n.connections_per_s,
        Sort::Active => n.active_connections,
        Sort::Bytes => n.bytes_in_per_s + n.bytes_out_per_s,
    };
    rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.node.cmp(&b.node)));
}

/// Sorts workload rows by `sort` (numbers: most first; then by name).
pub fn sort_workloads(rows: &mut [WorkloadRow], sort: Sort) {
    let key = |w: &WorkloadRow| match sort {
        Sort::Name => 0.0,
        Sort::Connections => w.connections_per_s,
        Sort::Active => w.active_connections,
        Sort::Bytes => w.bytes_in_per_s + w.bytes_out_per_s,
        Sort::Requests => w.requests_per_s.unwrap_or(-1.0),
    };
    rows.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then((&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)))
    });
}

fn draw(f: &mut Frame<'_>, view: &View) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let (mut nodes, mut workloads) = view
        .snapshot
        .as_ref()
        .map(|s| (s.nodes.clone(), s.workloads.clone()))
        .unwrap_or_default();
    sort_nodes(&mut nodes, view.sort);
    sort_workloads(&mut workloads, view.sort);
    let node_height = u16::try_from(nodes.len())
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [title, node_area, workload_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(node_height),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let status = match &view.snapshot {
        Some(s) => format!("rates over {:.1}s", s.interval_s),
        None => "waiting for a second scrape...".into(),
    };
    f.render_widget(
        Paragraph::new(Line::styled(
            format!("meshctl top — sorted by {} — {status}", view.sort.label()),
            bold,
        )),
        title,
    );
    let empty = VecDeque::new();
    let history = |key: String| spark(view.history.get(&key).unwrap_or(&empty));
    let node_rows = nodes.iter().map(|n| {
        Row::new(vec![
            n.node.clone(),
            opt(n.cpu_percent, |v| format!("{v:.1}%")),
            opt(n.memory_bytes, |v| bytes(v as u64)),
            format!("{:.0}", n.active_connections),
            rate(n.connections_per_s),
            byte_rate(n.bytes_in_per_s),
            byte_rate(n.bytes_out_per_s),
            rate(n.denials_per_s),
            history(format!("node/{}", n.node)),
        ])
    });
    let node_table = Table::new(
        node_rows,
        [
            Constraint::Length(12),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(HISTORY as u16),
        ],
    )
    .header(
        Row::new(vec![
            "NODE",
            "CPU",
            "MEMORY",
            "ACTIVE",
            "CONN/S",
            "BYTES-IN",
            "BYTES-OUT",
            "DENIED/S",
            "BYTES (1m)",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" nodes (ztunnel) "));
    f.render_widget(node_table, node_area);

    if view.workloads {
        let workload_rows = workloads.iter().map(|w| {
            Row::new(vec![
                w.namespace.clone(),
                w.workload.clone(),
                rate(w.connections_per_s),
                format!("{:.0}", w.active_connections),
                byte_rate(w.bytes_in_per_s),
                byte_rate(w.bytes_out_per_s),
                opt(w.requests_per_s, rate),
                opt(w.success_rate, |v| format!("{:.1}%", v * 100.0)),
                opt(w.p50_ms, |v| format!("{v:.0}ms")),
                opt(w.p99_ms, |v| format!("{v:.0}ms")),
                history(format!("workload/{}/{}", w.namespace, w.workload)),
            ])
        });
        let workload_table = Table::new(
            workload_rows,
            [
                Constraint::Length(12),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(HISTORY as u16),
            ],
        )
        .header(
            Row::new(vec![
                "NAMESPACE",
                "WORKLOAD",
                "CONN/S",
                "ACTIVE",
                "BYTES-IN",
                "BYTES-OUT",
                "REQ/S",
                "SUCCESS",
                "P50",
                "P99",
                "BYTES (1m)",
            ])
            .style(bold),
        )
        .block(Block::bordered().title(" workloads "));
        f.render_widget(workload_table, workload_area);
    }
    let mut keys = "q quit · s sort · w workloads".to_string();
    if let Some(e) = view.errors.first() {
        keys.push_str(&format!(" · {} target(s) not read: {e}", view.errors.len()));
    }
    f.render_widget(Paragraph::new(keys), footer);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_maximum() {
        let v: VecDeque<f64> = [0.0, 50.0, 100.0].into();
        assert_eq!(spark(&v), "▁▅█");
        assert_eq!(spark(&[0.0, 0.0].into()), "▁▁");
    }

    #[test]
    fn sort_cycles_and_orders_busiest_first() {
        let mut s = Sort::Name;
        let mut seen = vec![s];
        for _ in 0..4 {
            s = s.next();
            seen.push(s);
        }
        assert_eq!(s.next(), Sort::Name);
        assert_eq!(seen.len(), 5);
        let row = |name: &str, rps: Option<f64>| WorkloadRow {
            namespace: "demo".into(),
            workload: name.into(),
            connections_per_s: 0.0,
            active_connections: 0.0,
            bytes_in_per_s: 0.0,
            bytes_out_per_s: 0.0,
            requests_per_s: rps,
            success_rate: None,
            p50_ms: None,
            p99_ms: None,
        };
        let mut rows = vec![row("a", None), row("b", Some(1.0)), row("c", Some(5.0))];
        sort_workloads(&mut rows, Sort::Requests);
        let names: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(names, ["c", "b", "a"]);
        sort_workloads(&mut rows, Sort::Name);
        let names: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
