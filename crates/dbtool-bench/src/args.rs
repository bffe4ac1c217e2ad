//! The arguments every scenario takes, so that `scripts/bench` can run any of them alike.

/// `--quick`, `--runs N`, `--seconds S`; anything else is ignored (cargo passes
/// `--bench` to bench targets).
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// A small run that checks the scenario works (CI), not its numbers.
    pub quick: bool,
    /// Runs per contender (default 3); the report shows the median and the spread.
    pub runs: usize,
    /// Seconds per timed loop (default 4; 1 with `--quick`).
    pub seconds: f64,
}

impl Args {
    /// Reads the process's arguments.
    pub fn parse() -> Args {
        Args::from_args(std::env::args().skip(1))
    }

    /// Reads the given arguments (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Args {
        let args: Vec<String> = args.into_iter().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Args {
            quick,
            runs: value("--runs").map_or(3, |v| v.max(1.0) as usize),
            seconds: value("--seconds").unwrap_or(if quick { 1.0 } else { 4.0 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::from_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn defaults_are_three_runs_of_four_seconds() {
        assert_eq!(
            args("--bench"),
            Args {
                quick: false,
                runs: 3,
                seconds: 4.0
            }
        );
    }

    #[test]
    fn quick_shortens_the_loops_and_runs_and_seconds_override() {
        assert_eq!(
            args("--quick --runs 1"),
            Args {
                quick: true,
                runs: 1,
                seconds: 1.0
            }
        );
        assert_eq!(
            args("--runs 5 --seconds 2.5"),
            Args {
                quick: false,
                runs: 5,
                seconds: 2.5
            }
        );
    }

    #[test]
    fn at_least_one_run() {
        assert_eq!(args("--runs 0").runs, 1);
    }
}
