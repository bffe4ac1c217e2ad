//! The one result record every scenario prints and `scripts/bench` collects.

use std::fmt;

/// One measured number (or the reason a contender could not be measured).
///
/// Printed as one tab-separated line on stdout, `RESULT` then nine fields: section,
/// contender, metric, run, value, unit, 1-minute load, note, UTC time. The shell
/// sections of `scripts/bench` (migrate, verify) append the same nine fields to the
/// results file, so the report reads one format whatever produced the number.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The report section, declared in `crates/dbtool-bench/targets.toml`
    /// (e.g. `pool-select1`).
    pub section: String,
    /// Who was measured: `dbtool ...` for dbtool's side, the peer's name otherwise.
    pub contender: String,
    /// The number, or why there is none.
    pub outcome: Outcome,
    /// The 1-minute load average when the record was made (the machine is shared).
    pub load1: String,
    /// Free text shown next to the number in the report.
    pub note: String,
    /// When the record was made, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub time: String,
}

/// What a [`Record`] holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A measured value.
    Value {
        /// The metric's key in `targets.toml` (e.g. `qps`, `p99_us`, `wall_s`).
        metric: String,
        /// The run, from 1; the report takes the median over runs.
        run: usize,
        /// The value, in `unit`.
        value: f64,
        /// The unit, for the raw results file (the report formats by metric).
        unit: String,
    },
    /// The contender could not be measured; [`Record::note`] says why.
    Missing,
}

impl Record {
    /// A measured value, stamped with the current load and time.
    pub fn value(
        section: &str,
        contender: &str,
        metric: &str,
        run: usize,
        value: f64,
        unit: &str,
    ) -> Record {
        Record {
            section: section.to_owned(),
            contender: contender.to_owned(),
            outcome: Outcome::Value {
                metric: metric.to_owned(),
                run,
                value,
                unit: unit.to_owned(),
            },
            load1: crate::load1(),
            note: String::new(),
            time: utc_now(),
        }
    }

    /// A contender that could not be measured, with the reason (shown in the report).
    pub fn missing(section: &str, contender: &str, why: &str) -> Record {
        Record {
            section: section.to_owned(),
            contender: contender.to_owned(),
            outcome: Outcome::Missing,
            load1: crate::load1(),
            note: why.to_owned(),
            time: utc_now(),
        }
    }

    /// The same record with a note.
    pub fn with_note(mut self, note: &str) -> Record {
        self.note = note.to_owned();
        self
    }

    /// Prints the record's line on stdout, where `scripts/bench` collects it.
    pub fn emit(&self) {
        println!("{self}");
    }
}

/// Tabs and newlines would split the line; a field never holds them.
fn field(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (metric, run, value, unit) = match &self.outcome {
            Outcome::Value {
                metric,
                run,
                value,
                unit,
            } => (
                field(metric),
                run.to_string(),
                format!("{value:.3}"),
                field(unit),
            ),
            Outcome::Missing => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        write!(
            f,
            "RESULT\t{}\t{}\t{metric}\t{run}\t{value}\t{unit}\t{}\t{}\t{}",
            field(&self.section),
            field(&self.contender),
            field(&self.load1),
            field(&self.note),
            field(&self.time),
        )
    }
}

/// The current UTC time as the results file writes it.
fn utc_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(mut r: Record) -> Record {
        r.load1 = "1.50".into();
        r.time = "2026-12-07T12:00:00Z".into();
        r
    }

    #[test]
    fn a_value_prints_the_nine_fields_of_the_results_file() {
        let r = fixed(Record::value(
            "pool-point",
            "deadpool-postgres",
            "qps",
            2,
            41907.25,
            "ops/s",
        ));
        assert_eq!(
            r.to_string(),
            "RESULT\tpool-point\tdeadpool-postgres\tqps\t2\t41907.250\tops/s\t1.50\t\t2026-12-07T12:00:00Z"
        );
    }

    #[test]
    fn a_missing_contender_prints_dashes_and_its_reason() {
        let r = fixed(Record::missing(
            "cache-get",
            "redis-benchmark -P 16",
            "not installed",
        ));
        assert_eq!(
            r.to_string(),
            "RESULT\tcache-get\tredis-benchmark -P 16\t-\t-\t-\t-\t1.50\tnot installed\t2026-12-07T12:00:00Z"
        );
    }

    #[test]
    fn tabs_and_newlines_in_a_note_do_not_split_the_line() {
        let r = fixed(Record::missing(
            "shard-fanout",
            "dbtool Router::all",
            "cannot start:\n\tport in use",
        ));
        let line = r.to_string();
        assert_eq!(line.lines().count(), 1);
        assert_eq!(line.split('\t').count(), 10);
        assert!(line.contains("cannot start:  port in use"), "{line}");
    }
}
