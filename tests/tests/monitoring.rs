//! The chart's alerts and Grafana dashboard against what weftd really
//! exports: every expression parses as PromQL (promql-parser, a Rust port
//! of Prometheus' own parser: the check `promtool check rules` makes of
//! the expressions), and every metric they name is in a lab weftd's
//! `/metrics` (one node on vxlan, one on udp: the udp backend's metrics
//! exist only there). And the other way round: every metric weftd exports
//! has a place on the dashboard.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use promql_parser::parser::Expr;
use promql_parser::util::{ExprVisitor, walk_expr};
use weft_lab::{Backend, Lab, LabConfig, unique_name};

fn chart_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/weft/files")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric name an expression selects.
struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = ();
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
        let vs = match e {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(name) = vs.and_then(|v| v.name.clone()) {
            self.0.insert(name);
        }
        Ok(true)
    }
}

fn names_in(expr: &str, whence: &str) -> BTreeSet<String> {
    let ast = promql_parser::parser::parse(expr)
        .unwrap_or_else(|e| panic!("{whence}: {expr:?} is not PromQL: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast).unwrap();
    assert!(!names.0.is_empty(), "{whence}: {expr:?} selects no metric");
    names.0
}

/// The alert rules' expressions (one `expr:` line per `- alert:`).
fn rule_exprs() -> Vec<(String, String)> {
    let text = chart_file("prometheus-rules.yaml");
    let mut out = Vec::new();
    let mut alert = None;
    for line in text.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("- alert:") {
            assert!(
                alert.is_none(),
                "{a}: the previous alert has no one-line expr"
            );
            alert = Some(a.trim().to_string());
        } else if let Some(e) = line.strip_prefix("expr:") {
            let a = alert.take().expect("an expr outside an alert");
            let e = e.trim();
            assert!(
                !e.is_empty() && !e.starts_with('|') && !e.starts_with('>'),
                "{a}: keep each expr on one line for this test"
            );
            out.push((a, e.to_string()));
        }
    }
    assert!(alert.is_none(), "the last alert has no expr");
    out
}

/// The dashboard's queries, its template variables given values.
fn dashboard_exprs() -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(&chart_file("grafana-dashboard.json")).unwrap();
    let mut out = Vec::new();
    for p in v["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$node", ".*")
                .replace("$job", "weft");
            assert!(!expr.contains('$'), "{expr}: an unknown variable");
            out.push((p["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    out
}

/// The metric names of a Prometheus text exposition's samples.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn every_expression_is_promql_and_names_only_metrics_weftd_exports() {
    let mut lab = Lab::up(&LabConfig::with_weftd(&unique_name("monitor"), 2)).unwrap();
    lab.set_node("node-2", |s| s.backend = Some(Backend::Udp))
        .unwrap();
    lab.restart_weftd("node-2", Duration::from_secs(30))
        .unwrap();
    let mut have = exported(&lab.weftd_metrics("node-1").unwrap());
    have.extend(exported(&lab.weftd_metrics("node-2").unwrap()));
    assert!(have.contains("weft_udp_bytes_total"), "{have:?}");
    // Prometheus' own, for each target.
    have.insert("up".into());

    let rules = rule_exprs();
    assert!(rules.len() >= 8, "{rules:?}");
    let dashboard = dashboard_exprs();
    assert!(dashboard.len() >= 15, "{dashboard:?}");
    let mut used = BTreeSet::new();
    for (whence, expr) in rules.iter().chain(&dashboard) {
        for name in names_in(expr, whence) {
            assert!(
                have.contains(&name),
                "{whence}: {name} is not exported by weftd ({have:?})"
            );
            used.insert(name);
        }
    }
    // A summary is exported as _sum and _count: either counts as its use.
    let families: BTreeSet<String> = have
        .iter()
        .map(|n| {
            n.trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    let used_families: BTreeSet<String> = dashboard
        .iter()
        .flat_map(|(w, e)| names_in(e, w))
        .map(|n| {
            n.trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    let unshown: Vec<_> = families.difference(&used_families).collect();
    assert!(
        unshown.is_empty(),
        "metrics weftd exports that the dashboard does not show: {unshown:?}"
    );
}

#[test]
fn the_parser_used_here_refuses_what_promtool_refuses() {
    assert!(promql_parser::parser::parse("rate(weft_ready[5m]").is_err());
    assert!(promql_parser::parser::parse("sum by (instance weft_ready)").is_err());
    assert_eq!(
        names_in(
            "sum by (kind) (rate(weft_netlink_errors_total[5m])) > up",
            "t"
        ),
        BTreeSet::from(["up".to_string(), "weft_netlink_errors_total".to_string()])
    );
}
