//! Verify wall time against the migration's, on the sample forums.db.
//!
//! `cargo bench -p dbtool-verify --bench forums` generates (or reuses) the
//! benchmark file (`DBTOOL_BENCH_DB`, default `forums-bench.db` in the target
//! dir; `DBTOOL_BENCH_SCALE`, default `dbtool_sample::BENCH_SCALE`, about 1.1M
//! rows), migrates it into a fresh database of the testkit's local Postgres,
//! then verifies it (full, and a 10% sample), and prints the times and the
//! ratio verify/migrate (target: <= 0.5).

use std::path::PathBuf;
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let scale: f64 = std::env::var("DBTOOL_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(dbtool_sample::BENCH_SCALE);
    let path: PathBuf = std::env::var_os("DBTOOL_BENCH_DB").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../../target/forums-bench-{scale}.db"))
        },
        PathBuf::from,
    );
    if !path.exists() {
        let mut o = dbtool_sample::Options::new(&path);
        o.scale = scale;
        let s = dbtool_sample::generate(&o).expect("generate the sample");
        println!("generated {s}");
    }
    let db = dbtool_testkit::pg().await;
    let t = Instant::now();
    let opts = dbtool_migrate::run::Options::new(&path, db.url().parse().unwrap());
    let out = dbtool_migrate::run::migrate(
        opts,
        &dbtool_migrate::Config::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await
    .expect("migrate");
    let migrate = t.elapsed().as_secs_f64();
    let rows: u64 = out.tables.iter().map(|t| t.rows_written).sum();
    println!(
        "migrate: {rows} rows in {migrate:.2}s (process peak RSS so far {:.0} MiB)",
        peak_rss_mib()
    );

    let t = Instant::now();
    let r = dbtool_verify::verify(&dbtool_verify::Options::new(&path, db.url()))
        .await
        .expect("verify");
    let verify = t.elapsed().as_secs_f64();
    r.write_summary(std::io::stdout()).unwrap();
    println!("verify: {verify:.2}s, equal: {}", r.is_equal());

    let t = Instant::now();
    let mut o = dbtool_verify::Options::new(&path, db.url());
    o.sample = Some(10.0);
    let s = dbtool_verify::verify(&o).await.expect("verify --sample 10");
    println!(
        "verify --sample 10: {:.2}s, equal: {}",
        t.elapsed().as_secs_f64(),
        s.is_equal()
    );
    println!(
        "ratio verify/migrate: {:.2} (target <= 0.5); process peak RSS {:.0} MiB",
        verify / migrate,
        peak_rss_mib()
    );
}
