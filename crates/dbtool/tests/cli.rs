//! The command line itself: help, exit codes, error output.

mod common;

use std::process::Output;

/// `dbtool ARGS` in an empty directory (no dbtool.toml to pick up).
fn dbtool(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    common::run(dir.path(), args)
}

const COMMANDS: &[&str] = &[
    "migrate", "plan", "verify", "pool", "shard", "cache", "sample", "runs", "clean",
];

#[test]
fn help_lists_every_command() {
    let out = dbtool(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for c in COMMANDS {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(c)),
            "`dbtool --help` does not list {c}:\n{text}"
        );
    }
}

#[test]
fn every_command_help_has_examples() {
    for c in ["migrate", "plan", "verify", "sample", "runs", "clean"] {
        let out = dbtool(&[c, "--help"]);
        assert!(out.status.success(), "dbtool {c} --help failed");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Examples"),
            "`dbtool {c} --help` has no examples:\n{text}"
        );
    }
    for c in ["pool", "shard", "cache"] {
        let out = dbtool(&[c, "--help"]);
        assert!(out.status.success(), "dbtool {c} --help failed");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = dbtool(&["migrate", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreadable_config_file_exits_2_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dbtool.toml");
    std::fs::write(&path, "[migrate\nbroken").unwrap();
    let out = dbtool(&[
        "--config",
        path.to_str().unwrap(),
        "sample",
        "--scale",
        "1",
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("invalid config file") && err.contains("dbtool.toml"),
        "stderr: {err}"
    );
}

#[test]
fn unknown_config_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dbtool.toml");
    std::fs::write(&path, "[nosuchtable]\nx = 1\n").unwrap();
    let out = dbtool(&[
        "--config",
        path.to_str().unwrap(),
        "sample",
        "--scale",
        "1",
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("nosuchtable"), "stderr: {err}");
}
