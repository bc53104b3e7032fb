//! The README's examples, run as written: what a new user types first.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The fenced block that opens with `first_line`, without its fences.
fn block(text: &str, first_line: &str) -> String {
    let start = text
        .find(&format!("```toml\n{first_line}\n"))
        .unwrap_or_else(|| panic!("README has no block opening with {first_line:?}"));
    let body = &text[start + "```toml\n".len()..];
    body[..body.find("```").unwrap()].to_string()
}

/// `warden` with the environment a test needs: logs and sockets in `scratch`.
fn warden(scratch: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(WARDEN);
    cmd.args(args)
        .env("WARDEN_LOG_DIR", scratch.join("logs"))
        .env("WARDEN_CONTROL_DIR", scratch.join("control"))
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_LOG_LEVEL");
    cmd
}

#[test]
fn the_quick_start_runs_as_written() {
    let text = readme();
    let start = text.find("## Quick start").unwrap();
    let section = &text[start..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let scratch = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in block.lines() {
        // `cargo run --release -- ARGS   # prints: X`: the binary, from the repository.
        let Some(rest) = line.strip_prefix("cargo run --release -- ") else {
            continue;
        };
        let (command, comment) = rest.split_once('#').unwrap_or((rest, ""));
        let args: Vec<&str> = command.split_whitespace().collect();
        let (status, stdout, stderr) = run_to_end(
            warden(scratch.path(), &args).current_dir(env!("CARGO_MANIFEST_DIR")),
            DEADLINE,
        );
        assert_eq!(status.code(), Some(0), "{line}: {stdout}{stderr}");
        assert!(!stdout.trim().is_empty(), "{line}: no output");
        if let Some(want) = comment.trim().strip_prefix("prints: ") {
            assert_eq!(stdout.trim(), want, "{line}");
        }
        if args == ["call", "status"] {
            let tree: Value =
                serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
            assert!(tree["actors"].is_array(), "{stdout}");
        }
        ran += 1;
    }
    assert!(ran >= 4, "only {ran} commands in the Quick start");
}

#[test]
fn the_add_a_tool_example_checks_and_answers() {
    let text = readme();
    let actor = block(&text, "# actors/word_count.toml");
    let setup = Setup::new("[log]\nstderr = \"off\"\n").actor("word_count", &actor);
    // "Then `warden check` and `warden call word_count path=...`."
    let call = text
        .split('`')
        .find(|s| s.starts_with("warden call word_count "))
        .expect("README names the call to make");
    let config = setup.config_path();
    let config = config.to_str().unwrap();

    let (status, stdout, stderr) = run_to_end(
        &mut warden(setup.path(), &["check", "--config", config]),
        DEADLINE,
    );
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("ok, 1 tools"), "{stdout}");

    let mut args = vec!["call", "--config", config];
    args.extend(call.split_whitespace().skip(2));
    let (status, stdout, stderr) = run_to_end(&mut warden(setup.path(), &args), DEADLINE);
    assert_eq!(status.code(), Some(0), "{call}: {stdout}{stderr}");
    // wc's answer: lines, words and bytes, then the file's name.
    let path = call.rsplit("path=").next().unwrap();
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{stdout}");
    assert!(
        fields[..3].iter().all(|n| n.parse::<u64>().is_ok()),
        "{stdout}"
    );
    assert_eq!(fields[3], path, "{stdout}");
}

#[test]
fn the_authorization_example_checks_with_its_token_in_the_environment() {
    let text = readme();
    let auth = block(&text, "[auth]");
    let setup = Setup::new(&format!("[log]\nstderr = \"off\"\n{auth}"));
    let config = setup.config_path();
    // The third token's file, as a mounted secret would be.
    std::fs::create_dir(setup.path().join("secrets")).unwrap();
    std::fs::write(
        setup.path().join("secrets/ops"),
        "4b8e1f9c2a7d5e3b0c6f9a2d8e1b4c7f\n",
    )
    .unwrap();
    let check = |token: &str| {
        run_to_end(
            warden(
                setup.path(),
                &["check", "--config", config.to_str().unwrap()],
            )
            .env("WARDEN_DASHBOARD_TOKEN", token),
            DEADLINE,
        )
    };
    let (status, stdout, stderr) = check("9c2f6b1e8a4d7c3f0b5e2a9d6c1f8b4e");
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    // The same with a guessable token: refused, saying why.
    let (status, stdout, _) = check("password");
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("is too weak"), "{stdout}");
}

#[test]
fn warden_call_without_a_config_says_so_in_one_line() {
    let empty = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_to_end(
        warden(empty.path(), &["call", "echo", "message=hi"]).current_dir(empty.path()),
        DEADLINE,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.trim(),
        "warden call: config.toml: no such config file: pass --config FILE or set WARDEN_CONFIG"
    );
    // `warden check` says the same, and nothing about actors/ it could not know.
    let (status, stdout, _) = run_to_end(
        warden(empty.path(), &["check"]).current_dir(empty.path()),
        DEADLINE,
    );
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stdout,
        "config.toml: no such config file: pass --config FILE or set WARDEN_CONFIG\n1 problem(s)\n"
    );
}

#[test]
fn warden_call_names_each_config_problem_once_and_starts_nothing() {
    let setup = Setup::new("[server]\nmax_in_flight = 0\n").actor(
        "a",
        "name = \"a\"\nkind = \"builtin\"\nbuiltin = \"nope\"\n",
    );
    let config = setup.config_path();
    let (status, stdout, stderr) = run_to_end(
        &mut warden(
            setup.path(),
            &["call", "--config", config.to_str().unwrap(), "a"],
        ),
        DEADLINE,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.matches("unknown builtin `nope`").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("max_in_flight").count(), 1, "{stderr}");
    assert!(!stderr.contains("handshake"), "{stderr}");
}

#[test]
fn warden_call_leaves_no_log_files_unless_asked() {
    let setup = Setup::new("[log]\nstderr = \"off\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n");
    let config = setup.config_path();
    let config = config.to_str().unwrap();
    let logs = setup.path().join("logs");
    let mut cmd = warden(
        setup.path(),
        &["call", "--config", config, "echo", "message=hi"],
    );
    let (status, stdout, stderr) = run_to_end(&mut cmd, DEADLINE);
    assert_eq!(
        (status.code(), stdout.as_str()),
        (Some(0), "hi\n"),
        "{stderr}"
    );
    assert!(
        !logs.exists(),
        "warden call wrote logs into {}",
        logs.display()
    );
    // Asked for with WARDEN_LOG_LEVEL, the child logs as `serve` would.
    let mut cmd = warden(
        setup.path(),
        &["call", "--config", config, "echo", "message=hi"],
    );
    cmd.env("WARDEN_LOG_LEVEL", "info");
    let (status, _, stderr) = run_to_end(&mut cmd, DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(std::fs::read_dir(&logs).unwrap().count() > 0);
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let (status, script, stderr) = run_to_end(
        &mut warden(scratch.path(), &["completions", "bash"]),
        DEADLINE,
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    for command in ["serve", "status", "logs", "kill", "completions"] {
        assert!(
            script.contains(command),
            "no {command} in the bash completions"
        );
    }
    assert!(
        !script.contains("__guard"),
        "the hidden guardian is offered"
    );
    // bash itself reads it without a syntax error.
    let file = scratch.path().join("warden.bash");
    std::fs::write(&file, &script).unwrap();
    let (status, _, stderr) = run_to_end(Command::new("bash").arg("-n").arg(&file), DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");

    let pages = scratch.path().join("man1");
    let (status, _, stderr) = run_to_end(
        &mut warden(scratch.path(), &["man", pages.to_str().unwrap()]),
        DEADLINE,
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    let kill = std::fs::read_to_string(pages.join("warden-kill.1")).unwrap();
    assert!(kill.contains("server:NAME"), "{kill}");
    assert!(pages.join("warden.1").is_file() && pages.join("warden-logs.1").is_file());
    assert!(!pages.join("warden-__guard.1").exists());
}

#[test]
fn the_readmes_haproxy_backend_is_the_one_scripts_scale_runs() {
    let text = readme();
    let start = text
        .find("```\nbackend wardens\n")
        .expect("README shows the haproxy backend");
    let body = &text[start + 4..];
    let shown = &body[..body.find("```").unwrap()];
    let cfg = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg"),
    )
    .unwrap();
    let file: Vec<&str> = cfg.lines().map(str::trim).collect();
    // The servers are the reader's; the check interval is a variable there.
    for line in shown.lines().map(str::trim) {
        if line.starts_with("server ") || line.starts_with("default-server ") {
            continue;
        }
        assert!(
            file.contains(&line),
            "README's {line:?} is not in haproxy.cfg"
        );
    }
}
