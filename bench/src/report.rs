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
    /// The figure, in the scenario's unit.
    pub value: f64,
}

impl Row {
    /// A row.
    pub fn new(subject: &str, value: f64) -> Row {
        Row {
            subject: subject.to_string(),
            value,
        }
    }
}

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
    /// The subject the others are compared with.
    pub baseline: &'static str,
    /// The subject with a target, the ratio to the baseline it must reach, and the target in words.
    pub target: Option<(&'static str, f64, &'static str)>,
    /// A bound the target subject's figure must also keep (for lower-is-better scenarios).
    pub absolute_limit: Option<f64>,
    /// How it was measured.
    pub method: String,
    /// The figures.
    pub rows: Vec<Row>,
}

impl Scenario {
    /// Whether the target is met: the ratio on the right side of the wanted one,
    /// and the figure within the absolute limit if there is one.
    pub fn target_met(&self) -> Option<bool> {
        let (subject, want, _) = self.target?;
        let ratio = self.ratio(subject)?;
        let value = self.rows.iter().find(|r| r.subject == subject)?.value;
        let ratio_ok = if self.higher_is_better {
            ratio >= want
        } else {
            ratio <= want
        };
        Some(ratio_ok && self.absolute_limit.is_none_or(|limit| value <= limit))
    }

    /// `subject`'s figure divided by the baseline's.
    pub fn ratio(&self, subject: &str) -> Option<f64> {
        let value = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.subject == name)
                .map(|r| r.value)
        };
        Some(value(subject)? / value(self.baseline)?)
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
    let (label_w, bar_w, row_h) = (190.0, 380.0, 26.0);
    let max = s
        .rows
        .iter()
        .map(|r| r.value)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let height = 40.0 + row_h * s.rows.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
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
        } else if s.target.is_some_and(|t| t.0 == r.subject) {
            "#1e88e5"
        } else {
            "#90caf9"
        };
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\">{:.1}</text>",
            label_w - 6.0,
            y + 14.0,
            escape(&r.subject),
            row_h - 8.0,
            label_w + w + 6.0,
            y + 14.0,
            r.value
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `BENCHMARKS.md`: machine, versions, method, targets, then each scenario's
/// table and chart (charts in `plots_rel`, relative to the Markdown file).
pub fn markdown(env: &Environment, scenarios: &[Scenario], date: &str, plots_rel: &str) -> String {
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Latest run: {date}, on {} (Linux {}). Regenerate with `make bench`.\n",
        env.machine, env.kernel
    );
    let _ = writeln!(md, "Versions: {}.\n", env.versions.join("; "));
    md.push_str(
        "Method: every subject runs on this machine over loopback, one after another in the same run, \
         in front of the same echo backend (a small threaded Rust echo server) or HTTP backend. \
         The machine is shared and noisy, so each figure is read as a ratio to its baseline from the same run. \
         The clients are Rust (tokio + rustls) or wrk; they share the machine's cores with what they measure.\n\n",
    );
    md.push_str(
        "## Targets\n\n| target | subject | ratio to baseline | met |\n|---|---|---|---|\n",
    );
    for s in scenarios {
        if let Some((subject, _, words)) = s.target {
            let ratio = s.ratio(subject);
            let met = match s.target_met() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not measured",
            };
            let _ = writeln!(
                md,
                "| {} ({words}) | {subject} | {} | {met} |",
                s.title,
                ratio.map_or("-".into(), |r| format!("{r:.2}"))
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
            let ratio = s
                .ratio(&r.subject)
                .map_or("-".into(), |x| format!("{x:.2}"));
            let _ = writeln!(md, "| {} | {:.1} | {ratio} |", r.subject, r.value);
        }
        let _ = writeln!(md, "\n![{}]({plots_rel}/{}.svg)\n", s.title, s.id);
    }
    md.push_str(
        "## Not measured yet\n\n\
         The benchmark issue also asks for: the full chain per framing against plain HTTPS through the same nginx and \
         Envoy; tunnel set-up latency (p50/p99) direct and through the chain; router memory per idle tunnel at 1k and \
         10k tunnels against nginx stream; and scaling over 1, 16, 256 and 1,024 tunnels. They are not in this suite yet.\n",
    );
    md
}

/// Writes `latest.json` into `results`, one SVG per scenario into `plots`, and the Markdown to `markdown`.
pub fn write(
    results: &Path,
    plots: &Path,
    markdown_path: &Path,
    plots_rel: &str,
    env: &Environment,
    scenarios: &[Scenario],
    date: &str,
) -> io::Result<()> {
    fs::create_dir_all(results)?;
    fs::create_dir_all(plots)?;
    #[derive(Serialize)]
    struct Json<'a> {
        date: &'a str,
        environment: &'a Environment,
        scenarios: &'a [Scenario],
    }
    let json = serde_json::to_string_pretty(&Json {
        date,
        environment: env,
        scenarios,
    })
    .map_err(io::Error::other)?;
    fs::write(results.join("latest.json"), json + "\n")?;
    for s in scenarios {
        fs::write(plots.join(format!("{}.svg", s.id)), svg(s))?;
    }
    fs::write(markdown_path, markdown(env, scenarios, date, plots_rel))
}
