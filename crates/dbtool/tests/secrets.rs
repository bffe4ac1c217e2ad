//! No password in any output: the real `dbtool` binary migrates, verifies and
//! checks the pool against the testkit's TLS cluster (TLS-only logins with a
//! password, `sslmode=verify-full`), with the password given in the URL, in
//! `PGPASSWORD` and in a `password_file`; everything it writes (stdout,
//! stderr with debug logging, the report files, the reject file) is searched
//! for the password.

mod common;

use std::path::{Path, PathBuf};

use dbtool_testkit::{shared_tls_pg, PgCluster, TestDb};

/// A small source with one row Postgres cannot hold (NUL in text), so a
/// reject file is written.
fn source(dir: &Path) -> PathBuf {
    let path = dir.join("forums.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE topics (id INTEGER PRIMARY KEY, views INTEGER, title TEXT);
         INSERT INTO topics VALUES (1, 10, 'hello'), (2, 20, 'a' || char(0) || 'b'), (3, 30, 'bye');",
    )
    .unwrap();
    path
}

/// Everything one run of the binary printed.
struct Run {
    code: Option<i32>,
    output: String,
}

fn dbtool(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = common::dbtool(dir)
        .args(args)
        .env("RUST_LOG", "debug")
        .env("HOME", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run dbtool");
    Run {
        code: out.status.code(),
        output: format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The last lines of an output, for failure messages.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.contains("DEBUG")).collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Every file under `dir` except the source, as text.
fn files_written(dir: &Path, source: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path != source && path.is_file() && !path.ends_with("pw") {
            out.push((
                path.clone(),
                String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
            ));
        }
    }
    out
}

/// How the password reaches dbtool.
enum Secret {
    InUrl,
    Env,
    File,
}

/// `postgres://postgres[:pw]@host:port/db?sslmode=verify-full&sslrootcert=...[&password_file=...]`
fn target(
    pg: &PgCluster,
    db: &TestDb,
    dir: &Path,
    how: &Secret,
) -> (String, Vec<(String, String)>) {
    let password = pg.password().unwrap();
    let url = db.url().replace(
        "sslmode=require",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pg.ca_file().unwrap().display()
        ),
    );
    match how {
        Secret::InUrl => (url, Vec::new()),
        Secret::Env => (
            url.replace(&format!(":{password}@"), "@"),
            vec![("PGPASSWORD".to_owned(), password.to_owned())],
        ),
        Secret::File => {
            let file = dir.join("pw");
            std::fs::write(&file, format!("{password}\n")).unwrap();
            (
                format!(
                    "{}&password_file={}",
                    url.replace(&format!(":{password}@"), "@"),
                    file.display()
                ),
                Vec::new(),
            )
        }
    }
}

async fn no_password_in_any_output(how: Secret) {
    let pg = shared_tls_pg().await;
    let password = pg.password().unwrap();
    let db = pg.fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let src = source(dir);
    let (url, env) = target(pg, &db, dir, &how);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let src_s = src.to_str().unwrap();

    let mut runs = Vec::new();
    let migrate = dbtool(
        dir,
        &[
            "migrate",
            "--from",
            src_s,
            "--to",
            &url,
            "--report",
            "migrate.json",
        ],
        &env,
    );
    assert_eq!(
        migrate.code,
        Some(3),
        "one row is rejected:\n{}",
        tail(&migrate.output)
    );
    runs.push(migrate);
    let verify = dbtool(
        dir,
        &[
            "verify",
            "--from",
            src_s,
            "--to",
            &url,
            "--report",
            "verify.json",
        ],
        &env,
    );
    assert_eq!(verify.code, Some(0), "{}", tail(&verify.output));
    runs.push(verify);
    if !matches!(how, Secret::Env) {
        // The pool takes URLs only (PGPASSWORD is for the commands' --to).
        let status = dbtool(dir, &["pool", "status", "--primary", &url], &env);
        assert_eq!(status.code, Some(0), "{}", tail(&status.output));
        runs.push(status);
    }
    // A failing connection prints the target too: a wrong CA.
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, dbtool_testkit::TestCa::new().cert_pem()).unwrap();
    let bad = url.replace(
        pg.ca_file().unwrap().to_str().unwrap(),
        other_ca.to_str().unwrap(),
    );
    let failed = dbtool(dir, &["verify", "--from", src_s, "--to", &bad], &env);
    assert_eq!(failed.code, Some(2), "{}", tail(&failed.output));
    assert!(
        failed.output.contains("invalid peer certificate"),
        "{}",
        tail(&failed.output)
    );
    runs.push(failed);

    for run in &runs {
        assert!(
            !run.output.contains(password),
            "the password appears in the output:\n{}",
            run.output
        );
    }
    let files = files_written(dir, &src);
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["migrate.json", "verify.json", "forums.db.rejects.jsonl"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    for (path, text) in &files {
        assert!(
            !text.contains(password),
            "the password appears in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn no_password_in_any_output_with_the_password_in_the_url() {
    no_password_in_any_output(Secret::InUrl).await;
}

#[tokio::test]
async fn no_password_in_any_output_with_the_password_in_pgpassword() {
    no_password_in_any_output(Secret::Env).await;
}

#[tokio::test]
async fn no_password_in_any_output_with_a_password_file() {
    no_password_in_any_output(Secret::File).await;
}
