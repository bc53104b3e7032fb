//! A one-shot MCP client of a child `warden serve`: what `warden call` uses.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::service::{RoleClient, RunningService};
use rmcp::ServiceExt;
use serde_json::{Map, Value};

/// Why there is no answer to print.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot start warden serve: {0}")]
    Start(#[source] std::io::Error),
    #[error("MCP handshake failed: {0}")]
    Handshake(String),
    #[error("warden serve refused to start (its reason is above)")]
    Refused,
    #[error("tools/list failed: {0}")]
    List(String),
    #[error("tools/call failed: {0}")]
    Call(String),
}

/// A tool as `tools/list` describes it.
pub struct ToolInfo {
    pub name: String,
    pub input_schema: Arc<Map<String, Value>>,
}

/// A tool's answer, as text lines.
pub struct Answer {
    pub lines: Vec<String>,
    pub is_error: bool,
}

/// A session with a child `warden serve` (this same binary).
pub struct Client {
    service: RunningService<RoleClient, ()>,
    /// Killed when dropped.
    child: tokio::process::Child,
}

/// How long the child may take to exit once its session has ended.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a server that failed the handshake may take to finish saying why.
const STDERR_EOF_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Copies the child's stderr to ours until it closes, counting the bytes in `said`.
async fn relay_stderr(mut stderr: tokio::process::ChildStderr, said: Arc<AtomicUsize>) {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stderr.read(&mut buf).await {
        said.fetch_add(n, Ordering::Relaxed);
        let _ = std::io::stderr().write_all(&buf[..n]);
    }
}

impl Client {
    /// Starts `exe serve --config <config>` with `env` and does the handshake.
    pub async fn start(
        exe: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Client, ClientError> {
        let piped = std::process::Stdio::piped;
        let mut child = tokio::process::Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(piped())
            .stdout(piped())
            .stderr(piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(ClientError::Start)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three are piped");
        };
        // The server's stderr passes through to ours; whether it said
        // anything tells a refusal (its reason printed) from a broken pipe.
        let said = Arc::new(AtomicUsize::new(0));
        let relay = tokio::spawn(relay_stderr(stderr, said.clone()));
        match ().serve((stdout, stdin)).await {
            Ok(service) => Ok(Client { service, child }),
            Err(e) => {
                let _ = tokio::time::timeout(STDERR_EOF_WAIT, relay).await;
                if said.load(Ordering::Relaxed) > 0 {
                    return Err(ClientError::Refused);
                }
                // Silent: it may have crashed. How it ended says so.
                let how = match tokio::time::timeout(STDERR_EOF_WAIT, child.wait()).await {
                    Ok(Ok(status)) => format!(" (warden serve ended: {status})"),
                    _ => String::new(),
                };
                Err(ClientError::Handshake(format!("{e}{how}")))
            }
        }
    }

    pub async fn tools(&self) -> Result<Vec<ToolInfo>, ClientError> {
        let tools = self
            .service
            .list_all_tools()
            .await
            .map_err(|e| ClientError::List(e.to_string()))?;
        Ok(tools
            .into_iter()
            .map(|t| ToolInfo {
                name: t.name.to_string(),
                input_schema: t.input_schema,
            })
            .collect())
    }

    pub async fn call(&self, tool: &str, args: Map<String, Value>) -> Result<Answer, ClientError> {
        let result = self
            .service
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
            .await
            .map_err(|e| ClientError::Call(e.to_string()))?;
        let lines = result
            .content
            .iter()
            .map(|block| match block {
                ContentBlock::Text(t) => t.text.trim_end().to_string(),
                other => serde_json::to_string(other).unwrap_or_default(),
            })
            .collect();
        Ok(Answer {
            lines,
            is_error: result.is_error == Some(true),
        })
    }

    /// Ends the session; the child exits on its stdin's end, or is killed
    /// if it has not within [`EXIT_WAIT`].
    pub async fn close(mut self) {
        let _ = self.service.cancel().await;
        let _ = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that dies before it answers, saying nothing (a crash, a
    /// kill): the error says how it ended, not only that the pipe closed.
    #[tokio::test]
    async fn a_silent_server_that_ends_is_named_with_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        // `false serve --config ...`: exits 1 at once, writing nothing.
        let err = match Client::start(Path::new("/bin/false"), dir.path(), &[]).await {
            Ok(_) => panic!("a handshake with /bin/false"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("MCP handshake failed: "), "{err}");
        assert!(
            err.ends_with("(warden serve ended: exit status: 1)"),
            "{err}"
        );
    }
}
