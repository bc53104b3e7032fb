//! `warden call`: start `warden serve` as a child, call one tool as an MCP
//! client over its stdio, print the answer. A newcomer's first command and an
//! operator's smoke test.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::mcp::client::{Client, ToolInfo};

/// How long the whole call may take, start-up included, beyond the tool's own timeout.
const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// The exit code of `warden call`: 0 on success, 1 on an error result, 2 when
/// the call could not be made.
pub async fn run(config: &Path, tool: &str, pairs: &[String]) -> i32 {
    match tokio::time::timeout(CALL_DEADLINE, call(config, tool, pairs)).await {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("warden call: {e}");
            2
        }
        Err(_) => {
            eprintln!(
                "warden call: no answer within {}",
                humantime::format_duration(CALL_DEADLINE)
            );
            2
        }
    }
}

async fn call(config: &Path, tool: &str, pairs: &[String]) -> Result<i32, String> {
    // The config is checked here first: its problems are said once, in this
    // process, rather than as a child's refusal and a failed handshake.
    if let Err(problems) = crate::config::load(config, &|k| std::env::var(k).ok()) {
        if let [one] = problems.as_slice() {
            return Err(one.to_string());
        }
        let mut text = String::new();
        for p in &problems {
            text.push_str(&format!("{p}\n"));
        }
        return Err(format!(
            "{text}{} problems in the config (`warden check` lists them too)",
            problems.len()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the warden binary: {e}"))?;
    // Only problems from the server's log belong on this terminal, and the
    // server writes no log files unless asked (WARDEN_LOG_LEVEL): a smoke
    // test leaves no trace in the logs of the instances it resembles.
    let mut env: Vec<(&str, &str)> = Vec::new();
    if std::env::var_os("WARDEN_LOG_STDERR").is_none() {
        env.push(("WARDEN_LOG_STDERR", "error"));
    }
    if std::env::var_os("WARDEN_LOG_LEVEL").is_none() {
        env.push(("WARDEN_LOG_LEVEL", "off"));
    }
    let client = Client::start(&exe, config, &env)
        .await
        .map_err(|e| e.to_string())?;
    let answer = async {
        let tools = client.tools().await.map_err(|e| e.to_string())?;
        let Some(schema) = tools.iter().find(|t| t.name == tool) else {
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "unknown tool `{tool}` (tools: {})",
                names.join(", ")
            ));
        };
        let args = parse_pairs(schema, pairs)?;
        client.call(tool, args).await.map_err(|e| e.to_string())
    }
    .await;
    client.close().await;
    let answer = answer?;
    // A closed pipe (`warden call ... | head`) is not an error worth a panic.
    let mut out: Box<dyn Write> = if answer.is_error {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    for line in &answer.lines {
        let _ = writeln!(out, "{line}");
    }
    Ok(if answer.is_error { 1 } else { 0 })
}

/// `key=value` pairs as arguments: a value stays a string where the schema
/// says string (or says nothing), and is read as JSON otherwise.
fn parse_pairs(tool: &ToolInfo, pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut args = Map::new();
    for pair in pairs {
        let (key, raw) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        let ty = tool
            .input_schema
            .get("properties")
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str);
        let value = match ty {
            None | Some("string") => Value::String(raw.to_string()),
            Some(_) => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
        };
        args.insert(key.to_string(), value);
    }
    Ok(args)
}
