//! `targets.toml` is read by a script at the end of a long benchmark run: a name
//! used there but not declared would only show up as a missing row. Checked here.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Targets {
    metrics: BTreeMap<String, Metric>,
    section: Vec<Section>,
    goal: Vec<Goal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by report.py; here only parsed
struct Metric {
    label: String,
    unit: String,
    format: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Section {
    name: String,
    scenario: String,
    chart: Option<String>,
    lower_is_better: Option<bool>,
    size: Option<String>,
    about: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Goal {
    what: String,
    section: String,
    contender: String,
    metric: String,
    vs: Option<String>,
    vs_section: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
    from: String,
}

fn targets() -> Targets {
    toml::from_str(dbtool_bench::TARGETS).expect("targets.toml parses")
}

#[test]
fn every_chart_and_goal_names_a_declared_metric_and_section() {
    let t = targets();
    let sections: HashSet<&str> = t.section.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        sections.len(),
        t.section.len(),
        "a section is declared twice"
    );
    for s in &t.section {
        if let Some(chart) = &s.chart {
            assert!(
                t.metrics.contains_key(chart),
                "section {}: chart metric {chart} is not declared",
                s.name
            );
            assert!(
                s.lower_is_better.is_some(),
                "section {}: a chart needs lower_is_better",
                s.name
            );
        }
    }
    for g in &t.goal {
        assert!(
            sections.contains(g.section.as_str()),
            "goal {:?}: section {} is not declared",
            g.what,
            g.section
        );
        if let Some(vs) = &g.vs_section {
            assert!(
                sections.contains(vs.as_str()),
                "goal {:?}: vs_section {vs} is not declared",
                g.what
            );
            assert!(g.vs.is_some(), "goal {:?}: vs_section without vs", g.what);
        }
        assert!(
            t.metrics.contains_key(&g.metric),
            "goal {:?}: metric {} is not declared",
            g.what,
            g.metric
        );
        assert!(
            !g.contender.is_empty() && !g.from.is_empty(),
            "goal {:?}: contender and from are required",
            g.what
        );
    }
}

#[test]
fn every_goal_has_exactly_one_bound() {
    for g in targets().goal {
        assert!(
            g.max.is_some() != g.min.is_some(),
            "goal {:?}: give max or min, not both or neither",
            g.what
        );
    }
}

#[test]
fn every_scenario_has_a_shell_section_or_a_bench_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for s in targets().section {
        let shell = root
            .join("../../scripts/bench.d")
            .join(format!("{}.sh", s.scenario));
        let rust = root.join("benches").join(format!("{}.rs", s.scenario));
        assert!(
            shell.exists() || rust.exists(),
            "section {}: scenario {sc} has neither scripts/bench.d/{sc}.sh nor benches/{sc}.rs",
            s.name,
            sc = s.scenario
        );
    }
}
