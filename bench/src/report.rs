//! The results: JSON for machines, `BENCHMARKS.md` with tables and SVG bar
//! charts for people, both stating the machine, the versions and the method.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// One measured subject.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub subject: String,
    /// The condition it was measured under (such as the number of tunnels);
    /// ratios compare rows of the same group only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The figure, in the scenario's unit.
    pub value: f64,
    /// The figure of each round it summarises, in the order run (empty when it
    /// is not made of rounds): their spread is the noise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
}

impl Row {
    /// A row.
    pub fn new(subject: &str, value: f64) -> Row {
        Row {
            subject: subject.to_string(),
            group: None,
            value,
            rounds: Vec::new(),
        }
    }

    /// A row whose figure is the median of `rounds`.
    pub fn median_of(subject: &str, rounds: Vec<f64>) -> Row {
        Row {
            rounds: rounds.clone(),
            ..Row::new(subject, crate::measure::median(rounds))
        }
    }

    /// A row of a group.
    pub fn grouped(subject: &str, group: &str, value: f64) -> Row {
        Row {
            group: Some(group.to_string()),
            ..Row::new(subject, value)
        }
    }

    /// The subject and its group, for tables and charts.
    pub fn label(&self) -> String {
        match &self.group {
            Some(g) => format!("{}, {g}", self.subject),
            None => self.subject.clone(),
        }
    }
}

/// What a scenario's subjects must reach, as a ratio to the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The subjects held to it (in every group).
    pub subjects: Vec<&'static str>,
    /// The ratio to reach: at least (higher is better) or at most (lower is better).
    pub ratio: f64,
    /// A bound the figure itself must also keep (lower is better).
    pub limit: Option<f64>,
    /// The only group held to it, if not every group.
    pub group: Option<&'static str>,
    /// The target in words.
    pub words: &'static str,
}

impl Target {
    /// `subjects` must reach `ratio`.
    pub fn new(subjects: &[&'static str], ratio: f64, words: &'static str) -> Target {
        Target {
            subjects: subjects.to_vec(),
            ratio,
            limit: None,
            group: None,
            words,
        }
    }
}

/// The baseline that is, in each group, the best figure of the other TLS
/// terminators ([`Peer::OTHERS`](crate::peers::Peer::OTHERS)).
pub const BEST_PEER: &str = "the best peer";

/// One scenario and its figures.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Short name, for files.
    pub id: &'static str,
    /// Title.
    pub title: &'static str,
    /// Unit of the figures.
    pub unit: &'static str,
    /// Whether more is better.
    pub higher_is_better: bool,
    /// The subject the others are compared with (in each group).
    pub baseline: &'static str,
    /// What the target subjects must reach, if anything.
    pub target: Option<Target>,
    /// How it was measured.
    pub method: String,
    /// The figures.
    pub rows: Vec<Row>,
}

impl Scenario {
    /// The baseline's row in `row`'s group: for [`BEST_PEER`], the best of
    /// the other TLS terminators there.
    pub fn baseline_row(&self, row: &Row) -> Option<&Row> {
        let mut same_group = self.rows.iter().filter(|r| r.group == row.group);
        if self.baseline != BEST_PEER {
            return same_group.find(|r| r.subject == self.baseline);
        }
        let peers = same_group.filter(|r| {
            crate::peers::Peer::OTHERS
                .iter()
                .any(|p| p.name() == r.subject)
        });
        if self.higher_is_better {
            peers.max_by(|a, b| a.value.total_cmp(&b.value))
        } else {
            peers.min_by(|a, b| a.value.total_cmp(&b.value))
        }
    }

    /// The baseline's figure in `row`'s group.
    fn baseline_of(&self, row: &Row) -> Option<f64> {
        self.baseline_row(row).map(|r| r.value)
    }

    /// `row`'s figure divided by the baseline's of its group.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        let base = self.baseline_of(row).filter(|b| *b > 0.0)?;
        Some(row.value / base)
    }

    /// Whether `row` meets the target: the ratio on the right side of the
    /// wanted one, and the figure within the limit if there is one. `None`
    /// when the row is not held to a target or has no baseline.
    pub fn met(&self, row: &Row) -> Option<bool> {
        let target = self.target.as_ref().filter(|_| self.is_targeted(row))?;
        let ratio = self.ratio(row)?;
        let ratio_ok = if self.higher_is_better {
            ratio >= target.ratio
        } else {
            ratio <= target.ratio
        };
        Some(ratio_ok && target.limit.is_none_or(|limit| row.value <= limit))
    }

    /// Whether `row` is held to the target.
    pub fn is_targeted(&self, row: &Row) -> bool {
        self.target.as_ref().is_some_and(|t| {
            t.subjects.contains(&row.subject.as_str())
                && t.group.is_none_or(|g| row.group.as_deref() == Some(g))
        })
    }

    /// The rows held to the target.
    pub fn targeted(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| self.is_targeted(r))
    }
}

/// The machine and the versions, stated with every result.
#[derive(Debug, Serialize)]
pub struct Environment {
    /// CPU model and cores.
    pub machine: String,
    /// Kernel release.
    pub kernel: String,
    /// Versions of everything measured.
    pub versions: Vec<String>,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("{program}: {e}"))
}

/// Reads the machine and the versions.
pub fn environment(router_bin: &Path) -> Environment {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Environment {
        machine: format!("{cores} cores, {model}"),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        versions: vec![
            first_line(&router_bin.display().to_string(), &["--version"]),
            format!(
                "envoy {}",
                first_line(
                    &integration_tests::envoy_bin().display().to_string(),
                    &["--version"]
                )
                .rsplit("version: ")
                .next()
                .unwrap_or_default()
            ),
            first_line("nginx", &["-v"]),
            first_line("haproxy", &["-v"]),
            first_line("wrk", &["--version"]),
        ],
    }
}

/// A horizontal bar chart of a scenario, as SVG.
pub fn svg(s: &Scenario) -> String {
    let longest = s.rows.iter().map(|r| r.label().len()).max().unwrap_or(0);
    let (label_w, bar_w, row_h) = (12.0 + 6.6 * longest as f64, 380.0, 26.0);
    let max = s
        .rows
        .iter()
        .map(|r| r.value)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let height = 40.0 + row_h * s.rows.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"4\" y=\"16\" font-weight=\"bold\">{} ({})</text>\n",
        label_w + bar_w + 110.0,
        escape(s.title),
        escape(s.unit)
    );
    for (i, r) in s.rows.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let w = bar_w * r.value / max;
        let colour = if r.subject == s.baseline {
            "#9e9e9e"
        } else if s.is_targeted(r) {
            "#1e88e5"
        } else {
            "#90caf9"
        };
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{label_w:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            label_w - 6.0,
            y + 14.0,
            escape(&r.label()),
            row_h - 8.0,
            label_w + w + 6.0,
            y + 14.0,
            figure(r.value)
        );
    }
    out.push_str("</svg>\n");
    out
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

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `BENCHMARKS.md`: machine, versions, method, targets, then each scenario's
/// table and chart (charts in `plots_rel`, relative to the Markdown file), then
/// the discussion.
pub fn markdown(report: &Report, plots_rel: &str) -> String {
    let (env, scenarios, date) = (report.environment, report.scenarios, report.date);
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Latest run: {date}, on {} (Linux {}). Regenerate with `make bench`; \
         the figures are also in `bench/results/latest.json`.\n",
        env.machine, env.kernel
    );
    let _ = writeln!(md, "Versions: {}.\n", env.versions.join("; "));
    md.push_str(
        "Method: every subject runs on this machine over loopback, one after another in the same run, \
         in front of the same backend (`alpn-bench backend`, a small tokio echo, download and HTTP server in a process of its own). \
         The machine is shared and noisy, so each figure is read as a ratio to its baseline from the same run. \
         The clients are Rust (tokio + rustls, the project's own client library for tunnels) or wrk; \
         they share the machine's cores with what they measure.\n\n",
    );
    md.push_str("## Targets\n\n| scenario | target | subject | ratio to baseline | met |\n|---|---|---|---|---|\n");
    for s in scenarios {
        let Some(target) = &s.target else { continue };
        for r in s.targeted() {
            let mut ratio = s.ratio(r).map_or("-".into(), |x| format!("{x:.2}"));
            if let (BEST_PEER, Some(best)) = (s.baseline, s.baseline_row(r)) {
                ratio += &format!(" (to {})", best.subject);
            }
            let met = if s.met(r) == Some(true) {
                "yes"
            } else {
                "**no**"
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {ratio} | {met} |",
                s.title,
                target.words,
                r.label()
            );
        }
    }
    md.push('\n');
    for s in scenarios {
        let _ = writeln!(
            md,
            "## {}\n\n{}\n\n| subject | {} | ratio to {} |\n|---|---|---|",
            s.title, s.method, s.unit, s.baseline
        );
        for r in &s.rows {
            let mut ratio = s.ratio(r).map_or("-".into(), |x| format!("{x:.2}"));
            if let (BEST_PEER, Some(best)) = (s.baseline, s.baseline_row(r)) {
                if best.subject == r.subject {
                    ratio += " (the best peer)";
                }
            }
            let _ = writeln!(md, "| {} | {} | {ratio} |", r.label(), figure(r.value));
        }
        let _ = writeln!(md, "\n![{}]({plots_rel}/{}.svg)\n", s.title, s.id);
    }
    md.push_str(report.discussion);
    md
}

/// One run's results: what `latest.json` holds, and the discussion that
/// closes `BENCHMARKS.md`.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// When it ran.
    pub date: &'a str,
    /// Where it ran.
    pub environment: &'a Environment,
    /// The figures.
    pub scenarios: &'a [Scenario],
    /// Hand-written prose (`bench/discussion.md`), not part of the JSON.
    #[serde(skip)]
    pub discussion: &'a str,
}

/// Writes `latest.json` into `results`, one SVG per scenario into `plots`, and
/// the Markdown to `markdown_path` (linking the charts as `plots_rel`).
pub fn write(
    report: &Report,
    results: &Path,
    plots: &Path,
    markdown_path: &Path,
    plots_rel: &str,
) -> io::Result<()> {
    fs::create_dir_all(results)?;
    fs::create_dir_all(plots)?;
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    fs::write(results.join("latest.json"), json + "\n")?;
    for s in report.scenarios {
        fs::write(plots.join(format!("{}.svg", s.id)), svg(s))?;
    }
    fs::write(markdown_path, markdown(report, plots_rel))
}

#[cfg(test)]
mod tests {
    use super::{Row, Scenario, Target, BEST_PEER};

    fn scenario(higher_is_better: bool) -> Scenario {
        Scenario {
            id: "t",
            title: "t",
            unit: "u",
            higher_is_better,
            baseline: BEST_PEER,
            target: Some(Target {
                group: Some("big"),
                ..Target::new(&["alpn-router"], 1.0, "t")
            }),
            method: String::new(),
            rows: vec![
                Row::grouped("alpn-router", "small", 5.0),
                Row::grouped("nginx stream", "small", 4.0),
                Row::grouped("Envoy tcp_proxy", "small", 8.0),
                Row::grouped("raw TCP (ceiling)", "big", 100.0),
                Row::grouped("alpn-router", "big", 10.0),
                Row::grouped("nginx stream", "big", 12.0),
                Row::grouped("HAProxy tcp+ssl", "big", 9.0),
            ],
        }
    }

    #[test]
    fn the_best_peer_is_chosen_in_each_group_among_the_other_terminators() {
        let s = scenario(true);
        let best = |i: usize| s.baseline_row(&s.rows[i]).map(|r| r.subject.as_str());
        assert_eq!(best(0), Some("Envoy tcp_proxy"));
        // Raw TCP is the ceiling, not a peer.
        assert_eq!(best(4), Some("nginx stream"));
        assert_eq!(s.ratio(&s.rows[4]), Some(10.0 / 12.0));
        // Only the router in the named group is held to the target.
        let targeted: Vec<String> = s.targeted().map(Row::label).collect();
        assert_eq!(targeted, ["alpn-router, big"]);
        assert_eq!(s.met(&s.rows[4]), Some(false));
        assert_eq!(s.met(&s.rows[0]), None);

        let s = scenario(false);
        assert_eq!(
            s.baseline_row(&s.rows[4]).map(|r| r.subject.as_str()),
            Some("HAProxy tcp+ssl")
        );
        assert_eq!(s.met(&s.rows[4]), Some(false));
    }
}
