//! `warden call`: start `warden serve` as a child, call one tool as an MCP
//! client over its stdio, print the answer. A newcomer's first command and an
//! operator's smoke test.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ContentBlock, Tool};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{Map, Value};

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
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the warden binary: {e}"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("serve").arg("--config").arg(config);
    // Only problems from the server's log belong on this terminal.
    if std::env::var_os("WARDEN_LOG_STDERR").is_none() {
        cmd.env("WARDEN_LOG_STDERR", "error");
    }
    let child =
        TokioChildProcess::new(cmd).map_err(|e| format!("cannot start warden serve: {e}"))?;
    let client = ().serve(child).await.map_err(|e| format!("MCP handshake failed: {e}"))?;
    let tools = client
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"))?;
    let Some(schema) = tools.iter().find(|t| t.name == tool) else {
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        let _ = client.cancel().await;
        return Err(format!(
            "unknown tool `{tool}` (tools: {})",
            names.join(", ")
        ));
    };
    let args = parse_pairs(schema, pairs)?;
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await;
    let _ = client.cancel().await;
    let result = result.map_err(|e| format!("tools/call failed: {e}"))?;
    let failed = result.is_error == Some(true);
    // A closed pipe (`warden call ... | head`) is not an error worth a panic.
    let mut out: Box<dyn Write> = if failed {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    for block in &result.content {
        let text = match block {
            ContentBlock::Text(t) => t.text.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        };
        let _ = writeln!(out, "{}", text.trim_end());
    }
    Ok(if failed { 1 } else { 0 })
}

/// `key=value` pairs as arguments: a value stays a string where the schema
/// says string (or says nothing), and is read as JSON otherwise.
fn parse_pairs(tool: &Tool, pairs: &[String]) -> Result<Map<String, Value>, String> {
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
