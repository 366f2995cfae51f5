//! A comparison run (`make bench-compare`): each subject measured with the
//! current router paired with the same subject measured with the baseline
//! router in the same run, as a ratio current / baseline with its spread over
//! the rounds. Written to `bench/results/compare-<rev>.json` and `.md`, never
//! over `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::report::{Environment, Scenario};
use crate::Baseline;

/// One subject, with the current router and with the baseline router.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// The scenario's id.
    pub scenario: &'static str,
    /// The subject as measured with the current router.
    pub subject: String,
    /// Its group in the scenario, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The current router's figure.
    pub current: f64,
    /// The baseline router's figure.
    pub baseline: f64,
    /// `current / baseline`.
    pub ratio: f64,
    /// The same ratio round by round (each round's two figures were measured
    /// one right after the other): its spread is the noise. Empty when the
    /// figure is not made of rounds.
    pub round_ratios: Vec<f64>,
    /// Whether a ratio above 1 means the current router does better.
    pub higher_is_better: bool,
}

impl Pair {
    /// The smallest and largest ratio over the rounds.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let lo = self.round_ratios.iter().copied().reduce(f64::min)?;
        let hi = self.round_ratios.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    }
}

/// Every row of `scenarios` that has a counterpart measured with `baseline`'s
/// router (its name as [`Baseline::subject`] gives it, in the same group),
/// in report order.
pub fn pairs(scenarios: &[Scenario], baseline: &Baseline) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for s in scenarios {
        for current in &s.rows {
            let name = baseline.subject(&current.subject);
            let Some(base) = s
                .rows
                .iter()
                .find(|r| r.subject == name && r.group == current.group)
            else {
                continue;
            };
            let round_ratios = if current.rounds.len() == base.rounds.len() {
                current
                    .rounds
                    .iter()
                    .zip(&base.rounds)
                    .map(|(c, b)| c / b)
                    .collect()
            } else {
                Vec::new()
            };
            pairs.push(Pair {
                scenario: s.id,
                subject: current.subject.clone(),
                group: current.group.clone(),
                current: current.value,
                baseline: base.value,
                ratio: current.value / base.value,
                round_ratios,
                higher_is_better: s.higher_is_better,
            });
        }
    }
    pairs
}

/// What a comparison run writes.
#[derive(Debug, Serialize)]
pub struct Comparison<'a> {
    /// When it ran.
    pub date: &'a str,
    /// Where it ran.
    pub environment: &'a Environment,
    /// The baseline's revision.
    pub baseline_rev: &'a str,
    /// Current against baseline, subject by subject.
    pub pairs: &'a [Pair],
    /// Every figure of the run.
    pub scenarios: &'a [Scenario],
}

/// A figure with as many decimals as its size needs.
fn figure(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The comparison as Markdown: the pairs, then every scenario's figures with
/// their rounds.
pub fn markdown(c: &Comparison) -> String {
    let rev = c.baseline_rev;
    let mut md = format!("# The router against {rev}, side by side\n\n");
    let _ = writeln!(
        md,
        "Run: {}, on {} (Linux {}); `make bench-compare BASELINE={rev}`. Both routers ran in the same run, \
         taking turns (the order swapped every other round); each ratio is current / baseline, and its spread \
         is the lowest and highest ratio of a single round.\n",
        c.date, c.environment.machine, c.environment.kernel
    );
    md.push_str(
        "| scenario | subject | unit | current | baseline | current / baseline | per round | better |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for p in c.pairs {
        let s = c.scenarios.iter().find(|s| s.id == p.scenario);
        let subject = match &p.group {
            Some(g) => format!("{}, {g}", p.subject),
            None => p.subject.clone(),
        };
        let spread = p
            .spread()
            .map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"));
        let better = if p.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        let _ = writeln!(
            md,
            "| {} | {subject} | {} | {} | {} | {:.2} | {spread} | {better} |",
            p.scenario,
            s.map_or("", |s| s.unit),
            figure(p.current),
            figure(p.baseline),
            p.ratio
        );
    }
    md.push_str("\n## Every figure of the run\n");
    for s in c.scenarios {
        let _ = writeln!(
            md,
            "\n### {} ({})\n\n| subject | {} | rounds |\n|---|---|---|",
            s.title, s.id, s.unit
        );
        for r in &s.rows {
            let rounds: Vec<String> = r.rounds.iter().map(|v| figure(*v)).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                r.label(),
                figure(r.value),
                rounds.join(", ")
            );
        }
    }
    md
}

/// Writes `compare-<rev>.json` and `compare-<rev>.md` into `dir`; returns the
/// Markdown.
pub fn write(c: &Comparison, dir: &Path) -> io::Result<String> {
    fs::create_dir_all(dir)?;
    let stem = format!("compare-{}", c.baseline_rev);
    let json = serde_json::to_string_pretty(c).map_err(io::Error::other)?;
    fs::write(dir.join(format!("{stem}.json")), json + "\n")?;
    let md = markdown(c);
    fs::write(dir.join(format!("{stem}.md")), &md)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use crate::report::{Row, Scenario};
    use crate::Baseline;

    fn rounds(subject: &str, rounds: &[f64]) -> Row {
        Row::median_of(subject, rounds.to_vec())
    }

    #[test]
    fn pairs_each_subject_with_its_baseline_round_by_round() {
        let baseline = Baseline {
            rev: "abc1234".into(),
            router_bin: "/nowhere".into(),
        };
        let scenario = Scenario {
            id: "data-path-1",
            title: "t",
            unit: "MiB/s",
            higher_is_better: true,
            baseline: "nginx stream",
            target: None,
            method: String::new(),
            rows: vec![
                rounds("alpn-router", &[100.0, 120.0, 90.0]),
                rounds("alpn-router (baseline abc1234)", &[100.0, 100.0, 100.0]),
                rounds("nginx stream", &[80.0, 80.0, 80.0]),
            ],
        };
        let pairs = super::pairs(&[scenario], &baseline);
        assert_eq!(pairs.len(), 1);
        let p = &pairs[0];
        assert_eq!(p.subject, "alpn-router");
        assert_eq!((p.current, p.baseline, p.ratio), (100.0, 100.0, 1.0));
        assert_eq!(p.round_ratios, [1.0, 1.2, 0.9]);
        assert_eq!(p.spread(), Some((0.9, 1.2)));
    }
}
