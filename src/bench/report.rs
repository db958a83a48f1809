//! The results table (markdown, for the terminal and BENCHMARKS.md) and the budget verdicts.

use std::fmt::Write as _;

/// One cell of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Num(f64),
    Text(String),
    Missing,
}

impl Cell {
    fn num(&self) -> Option<f64> {
        match self {
            Cell::Num(v) if v.is_finite() => Some(*v),
            _ => None,
        }
    }
}

impl From<Option<f64>> for Cell {
    fn from(v: Option<f64>) -> Cell {
        v.map_or(Cell::Missing, Cell::Num)
    }
}

impl From<f64> for Cell {
    fn from(v: f64) -> Cell {
        Cell::Num(v)
    }
}

impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(v)
    }
}

/// One workload: the direct baseline and the tunnel, measured in the same run.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub direct: Cell,
    pub tunnel: Cell,
    /// Decimals for numbers.
    pub decimals: usize,
    /// Show tunnel / direct.
    pub ratio: bool,
}

/// A budget from the issue and whether this run met it.
#[derive(Debug, Clone)]
pub struct Budget {
    pub what: String,
    pub limit: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub budgets: Vec<Budget>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        label: impl Into<String>,
        direct: impl Into<Cell>,
        tunnel: impl Into<Cell>,
        decimals: usize,
    ) {
        self.rows.push(Row {
            label: label.into(),
            direct: direct.into(),
            tunnel: tunnel.into(),
            decimals,
            ratio: true,
        });
    }

    /// A row without a ratio (tunnel-only figures such as RSS or CPU).
    pub fn info(
        &mut self,
        label: impl Into<String>,
        direct: impl Into<Cell>,
        tunnel: impl Into<Cell>,
        decimals: usize,
    ) {
        self.rows.push(Row {
            label: label.into(),
            direct: direct.into(),
            tunnel: tunnel.into(),
            decimals,
            ratio: false,
        });
    }

    pub fn budget(&mut self, what: &str, limit: &str, measured: String, met: Option<bool>) {
        self.budgets.push(Budget {
            what: what.to_owned(),
            limit: limit.to_owned(),
            measured,
            met,
        });
    }

    pub fn render(&self, tunnel_label: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| workload | direct | {tunnel_label} | tunnel / direct |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for r in &self.rows {
            let ratio = match (r.ratio, r.direct.num(), r.tunnel.num()) {
                (true, Some(d), Some(t)) if d != 0.0 => format!("x{:.2}", t / d),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.label,
                fmt(&r.direct, r.decimals),
                fmt(&r.tunnel, r.decimals),
                ratio
            );
        }
        if !self.budgets.is_empty() {
            let _ = writeln!(out, "\n| budget | limit | measured | verdict |");
            let _ = writeln!(out, "|---|---|---|---|");
            for b in &self.budgets {
                let verdict = match b.met {
                    Some(true) => "met",
                    Some(false) => "**MISSED**",
                    None => "not measured",
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    b.what, b.limit, b.measured, verdict
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let cell = |c: &Cell| match c {
            Cell::Num(v) if v.is_finite() => serde_json::json!(v),
            Cell::Text(s) => serde_json::json!(s),
            _ => serde_json::Value::Null,
        };
        serde_json::json!({
            "rows": self.rows.iter().map(|r| serde_json::json!({
                "workload": r.label,
                "direct": cell(&r.direct),
                "tunnel": cell(&r.tunnel),
            })).collect::<Vec<_>>(),
            "budgets": self.budgets.iter().map(|b| serde_json::json!({
                "budget": b.what, "limit": b.limit, "measured": b.measured, "met": b.met,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

fn fmt(c: &Cell, decimals: usize) -> String {
    match c {
        Cell::Num(v) if v.is_finite() => format!("{v:.decimals$}"),
        Cell::Num(_) | Cell::Missing => "–".to_owned(),
        Cell::Text(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ratio_and_budget() {
        let mut r = Report::default();
        r.row("bulk (Gbit/s)", 20.0, 5.0, 1);
        r.info("relay RSS (MiB)", Cell::Missing, 3.25, 2);
        r.budget("throughput", ">= 25%", "25%".into(), Some(true));
        let t = r.render("tunnel");
        assert!(t.contains("| bulk (Gbit/s) | 20.0 | 5.0 | x0.25 |"), "{t}");
        assert!(t.contains("| relay RSS (MiB) | – | 3.25 |  |"), "{t}");
        assert!(t.contains("| throughput | >= 25% | 25% | met |"), "{t}");
    }
}
