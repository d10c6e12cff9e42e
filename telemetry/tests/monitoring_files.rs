//! The alert rules and the Grafana dashboard under `k8s/monitoring/` use
//! only metrics Coffer exports, and the dashboard shows every one of them.
//! (`promtool check rules` and `promtool test rules` check the rules
//! themselves; scripts/check-deploy.sh runs them.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use coffer_telemetry::names::{self, METRICS};

fn monitoring_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../k8s/monitoring")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `coffer_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\bcoffer_[a-z0-9_]+").expect("pattern");
    pattern
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// The PromQL of every panel of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&monitoring_file("dashboard.json")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .filter(|panel| panel["type"] != "row")
        .flat_map(|panel| {
            let targets = panel["targets"]
                .as_array()
                .expect("every panel has targets");
            assert!(
                !targets.is_empty(),
                "panel {} queries nothing",
                panel["title"]
            );
            targets
                .iter()
                .map(|target| target["expr"].as_str().expect("a PromQL expr").to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let rules = monitoring_file("alerts.yaml");
    let used = metric_names(&rules);
    assert!(used.len() >= 5, "{used:?}");
    for name in &used {
        assert!(
            names::find(name).is_some(),
            "alerts.yaml uses {name}, which nothing exports"
        );
    }
    for alert in [
        "CofferBackupFailed",
        "CofferJobStale",
        "CofferNoWorkerConnected",
        "CofferQueueAgeHigh",
        "CofferLeaseExpiriesRising",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
        assert!(
            monitoring_file("alerts_test.yaml").contains(&format!("alertname: {alert}")),
            "{alert} has no promtool unit test"
        );
    }
}

#[test]
fn the_dashboard_shows_every_exported_metric_and_nothing_else() {
    let used = metric_names(&dashboard_queries().join("\n"));
    for name in &used {
        assert!(
            names::find(name).is_some(),
            "the dashboard uses {name}, which nothing exports"
        );
    }
    let shown: BTreeSet<&str> = used
        .iter()
        .filter_map(|name| names::find(name))
        .map(|metric| metric.name)
        .collect();
    for metric in METRICS {
        assert!(
            shown.contains(metric.name),
            "{} is not on the dashboard",
            metric.name
        );
    }
}

#[test]
fn histogram_series_are_found_by_their_suffixes_and_nothing_else_is() {
    assert!(names::find("coffer_run_duration_seconds_bucket").is_some());
    assert!(names::find("coffer_lease_grants_total_bucket").is_none());
    assert!(names::find("coffer_not_a_metric").is_none());
}
