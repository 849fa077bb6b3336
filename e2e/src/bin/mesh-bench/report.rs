//! The side-by-side table: every measurement of every round, per mesh, reduced to the median
//! and the spread (min–max) over the rounds, with ours ÷ no mesh and ours ÷ upstream.

use std::collections::BTreeMap;

/// The three ways the same pods talk.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Mesh {
    /// Namespace `plain`: not enrolled, plain TCP between pods.
    Plain,
    /// Namespace `mesh`, through our ztunnel on both nodes.
    Ours,
    /// Namespace `mesh`, through upstream Istio ztunnel on both nodes.
    Upstream,
}

impl Mesh {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mesh::Plain => "no mesh",
            Mesh::Ours => "ours",
            Mesh::Upstream => "upstream",
        }
    }
}

/// A row of the table: its key in the samples, its label and its decimals.
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) label: String,
    pub(crate) decimals: usize,
}

/// Every value measured, by (row key, mesh), one per round.
#[derive(Default)]
pub(crate) struct Samples {
    values: BTreeMap<(&'static str, Mesh), Vec<f64>>,
    /// Failed requests or connections, by mesh (over all rounds).
    pub(crate) errors: BTreeMap<Mesh, u64>,
}

impl Samples {
    pub(crate) fn add(&mut self, mesh: Mesh, key: &'static str, v: f64) {
        self.values.entry((key, mesh)).or_default().push(v);
    }

    pub(crate) fn get(&self, mesh: Mesh, key: &str) -> Vec<f64> {
        self.values
            .iter()
            .find(|((k, m), _)| *k == key && *m == mesh)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Median, min and max of a row for a mesh (None: nothing measured).
    pub(crate) fn stats(&self, mesh: Mesh, key: &str) -> Option<(f64, f64, f64)> {
        let mut v: Vec<f64> = self
            .get(mesh, key)
            .into_iter()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((median_sorted(&v), v[0], v[v.len() - 1]))
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
pub(crate) fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn cell(s: Option<(f64, f64, f64)>, d: usize, rounds: usize) -> String {
    match s {
        None => "-".into(),
        Some((m, lo, hi)) if rounds > 1 => format!("{m:.d$} ({lo:.d$}–{hi:.d$})"),
        Some((m, _, _)) => format!("{m:.d$}"),
    }
}

fn ratio(a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>) -> String {
    match (a, b) {
        (Some((a, _, _)), Some((b, _, _))) if b > 0.0 && a.is_finite() => {
            format!("{:.2}x", a / b)
        }
        _ => "-".into(),
    }
}

/// Prints the table (markdown) of `rows` for `meshes`.
pub(crate) fn print(title: &str, rows: &[Row], meshes: &[Mesh], s: &Samples, rounds: usize) {
    println!();
    println!("{title}");
    println!();
    let mut header = String::from("| measurement |");
    let mut rule = String::from("| --- |");
    for m in meshes {
        header.push_str(&format!(" {} |", m.label()));
        rule.push_str(" ---: |");
    }
    header.push_str(" ours/no-mesh |");
    rule.push_str(" ---: |");
    if meshes.contains(&Mesh::Upstream) {
        header.push_str(" ours/upstream |");
        rule.push_str(" ---: |");
    }
    println!("{header}\n{rule}");
    for row in rows {
        let mut line = format!("| {} |", row.label);
        for m in meshes {
            line.push_str(&format!(
                " {} |",
                cell(s.stats(*m, row.key), row.decimals, rounds)
            ));
        }
        let ours = s.stats(Mesh::Ours, row.key);
        line.push_str(&format!(
            " {} |",
            ratio(ours, s.stats(Mesh::Plain, row.key))
        ));
        if meshes.contains(&Mesh::Upstream) {
            line.push_str(&format!(
                " {} |",
                ratio(ours, s.stats(Mesh::Upstream, row.key))
            ));
        }
        println!("{line}");
    }
}

/// Rows of latency the mesh adds: median of the mesh minus median of no mesh, per key.
pub(crate) fn print_added(keys: &[(&'static str, &str)], meshes: &[Mesh], s: &Samples) {
    let added = |m: Mesh, key: &str| -> Option<f64> {
        Some(s.stats(m, key)?.0 - s.stats(Mesh::Plain, key)?.0)
    };
    println!();
    println!("| added latency (median of mesh − median of no mesh, ms) | ours | upstream | ours/upstream |");
    println!("| --- | ---: | ---: | ---: |");
    for (key, label) in keys {
        let ours = added(Mesh::Ours, key);
        let up = if meshes.contains(&Mesh::Upstream) {
            added(Mesh::Upstream, key)
        } else {
            None
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        let r = match (ours, up) {
            (Some(o), Some(u)) if u > 0.0 => format!("{:.2}x", o / u),
            _ => "-".into(),
        };
        println!("| {label} | {} | {} | {r} |", f(ours), f(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median_sorted(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median_sorted(&[1.0, 2.0, 4.0, 10.0]), 3.0);
    }

    #[test]
    fn stats_skip_unmeasured_values_and_give_the_spread() {
        let mut s = Samples::default();
        for v in [3.0, f64::NAN, 1.0, 2.0] {
            s.add(Mesh::Ours, "k", v);
        }
        assert_eq!(s.stats(Mesh::Ours, "k"), Some((2.0, 1.0, 3.0)));
        assert_eq!(s.stats(Mesh::Upstream, "k"), None);
        assert_eq!(ratio(Some((2.0, 0.0, 0.0)), Some((4.0, 0.0, 0.0))), "0.50x");
        assert_eq!(ratio(Some((2.0, 0.0, 0.0)), None), "-");
        assert_eq!(cell(Some((2.0, 1.0, 3.0)), 1, 3), "2.0 (1.0–3.0)");
    }
}
