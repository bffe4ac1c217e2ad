//! Writes the forums workload into a sample file until stopped.
//!
//! ```text
//! cargo run -p dbtool-sample --example workload -- FILE [--rate N] [--seconds S] [--acks FILE]
//! ```
//!
//! Prints one line per second (writes acknowledged, failed) and, with
//! `--acks`, appends each acknowledged write as a JSON line
//! `{"table":..,"key":..,"op":..}`.

use std::io::Write as _;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dbtool_sample::workload::{run, Op, WorkloadOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: workload FILE [--rate N] [--seconds S] [--acks FILE]");
        std::process::exit(2);
    };
    let mut opts = WorkloadOptions::new(path);
    let mut acks: Option<std::fs::File> = None;
    let mut i = 1;
    while i + 1 < args.len() + 1 && i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rate" => opts.rate = v.parse().unwrap_or(1000.0),
            "--seconds" => opts.duration = v.parse().ok().map(Duration::from_secs_f64),
            "--acks" => acks = std::fs::File::create(&v).ok(),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let stop = AtomicBool::new(false);
    let summary = run(&opts, &stop, |a| {
        if let Some(f) = acks.as_mut() {
            let op = match a.op {
                Op::Insert => "insert",
                Op::Update => "update",
                Op::Delete => "delete",
            };
            let _ = writeln!(
                f,
                "{{\"table\":\"{}\",\"key\":{:?},\"op\":\"{op}\"}}",
                a.table, a.key
            );
        }
    });
    match summary {
        Ok(s) => println!(
            "workload: {} writes acknowledged, {} failed in {:.1} s{}",
            s.acked,
            s.failed,
            s.elapsed.as_secs_f64(),
            s.errors
                .first()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        ),
        Err(e) => {
            eprintln!("workload: {e}");
            std::process::exit(1);
        }
    }
}
