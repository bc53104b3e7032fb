//! A one-shot MCP client of a child `warden serve`: what `warden call` uses.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
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
}

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
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve").arg("--config").arg(config);
        cmd.envs(env.iter().copied());
        let (child, stderr) = TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(ClientError::Start)?;
        // The server's stderr passes through to ours; whether it said
        // anything tells a refusal (its reason printed) from a broken pipe.
        let said = Arc::new(AtomicUsize::new(0));
        let relay = stderr.map(|stderr| tokio::spawn(relay_stderr(stderr, said.clone())));
        match ().serve(child).await {
            Ok(service) => Ok(Client { service }),
            Err(e) => {
                if let Some(relay) = relay {
                    let _ = tokio::time::timeout(STDERR_EOF_WAIT, relay).await;
                }
                Err(if said.load(Ordering::Relaxed) > 0 {
                    ClientError::Refused
                } else {
                    ClientError::Handshake(e.to_string())
                })
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

    /// Ends the session; the child exits on its stdin's end.
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}
