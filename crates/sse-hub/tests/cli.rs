//! The command line of the real `sse-hub` binary: `--help` shows every
//! setting of the library's tables with its flag, variable and default, and a
//! setting that cannot be used stops the hub with one line naming it (exit
//! 2, no backtrace).

use std::process::Output;

use sse_hub::config::{NUDGE_SETTINGS, SETTINGS, Setting};
use sse_testkit::within;

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = sse_testkit::workspace_bin("sse-hub");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args).envs(env.iter().copied()).kill_on_drop(true);
    within(&format!("sse-hub {args:?}"), cmd.output()).await.expect("run sse-hub")
}

/// The help text of one option: its `--flag` line and the lines under it,
/// up to the next option.
fn option_block<'a>(help: &'a str, flag: &str) -> Option<String> {
    let lines: Vec<&'a str> = help.lines().collect();
    let start = lines.iter().position(|l| {
        let l = l.trim_start();
        l.strip_prefix("--").and_then(|rest| rest.strip_prefix(flag)).is_some_and(|rest| rest.starts_with(' '))
    })?;
    let end =
        lines[start + 1..].iter().position(|l| l.trim_start().starts_with('-')).map_or(lines.len(), |i| start + 1 + i);
    Some(lines[start..end].join("\n"))
}

fn assert_documented(help: &str, table: &[Setting]) {
    for s in table {
        let block = option_block(help, s.flag).unwrap_or_else(|| panic!("--{} is not in --help:\n{help}", s.flag));
        assert!(block.contains(&format!("[env: {}]", s.env)), "--{} does not name {}:\n{block}", s.flag, s.env);
        if let Some(default) = s.default {
            assert!(
                block.contains(&format!("[default: {default}]")),
                "--{} does not show its default:\n{block}",
                s.flag
            );
        }
    }
}

#[tokio::test]
async fn help_lists_every_setting_with_its_flag_variable_and_default() {
    let out = run(&["--help"], &[]).await;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout);
    assert_documented(&help, SETTINGS);
    assert!(help.contains("rotation-nudge"), "the subcommand is listed:\n{help}");

    let out = run(&["rotation-nudge", "--help"], &[]).await;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_documented(&String::from_utf8_lossy(&out.stdout), NUDGE_SETTINGS);
}

#[tokio::test]
async fn an_unusable_setting_exits_2_naming_it_without_a_backtrace() {
    // The flag wins over the variable, so the error names the flag's value.
    let out = run(&["--port", "notaport"], &[("RUST_BACKTRACE", "1"), ("PORT", "1")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("PORT") && stderr.contains("notaport"), "the message names PORT and its value: {stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "no backtrace: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // The same rule for the variable alone.
    let out =
        run(&["--data-dir", "/nonexistent"], &[("RUST_BACKTRACE", "1"), ("HEARTBEAT_INTERVAL_SECONDS", "0")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("HEARTBEAT_INTERVAL_SECONDS"), "{stderr}");

    // A true/false setting given as a bare flag is true: OIDC then needs its issuer.
    let out = run(&["--oidc-enabled"], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("OIDC_ISSUER_URL is required"), "{stderr}");

    let out = run(&["rotation-nudge"], &[("RUST_BACKTRACE", "1")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("INTERNAL_API_URL") && stderr.contains("--url"), "{stderr}");
}

#[tokio::test]
async fn a_failure_at_run_time_exits_1_without_a_backtrace() {
    // The port is taken (by this test's listener): the hub cannot listen.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let data = std::env::temp_dir().join(format!("sse-hub-cli-{}", uuid::Uuid::new_v4().simple()));
    let data = data.to_string_lossy().into_owned();
    let out = run(&["--host", "127.0.0.1", "--port", &port, "--data-dir", &data], &[("RUST_BACKTRACE", "1")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(&format!("sse-hub: cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "no backtrace: {stderr}");
    drop(taken);
}
