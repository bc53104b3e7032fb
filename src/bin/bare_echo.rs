//! `warden-bare-echo`: the benchmark baseline. A bare rmcp stdio MCP server
//! with one tool, `echo`, and nothing else: no supervision, no actors, no
//! logging. `scripts/bench` measures warden against it.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig,
    Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde_json::{json, Value};

#[derive(Clone)]
struct BareEcho {
    tools: Arc<Vec<Tool>>,
}

impl BareEcho {
    fn new() -> Self {
        let schema = match json!({
            "type": "object",
            "required": ["message"],
            "additionalProperties": false,
            "properties": {
                "message": {"type": "string", "description": "The text to send back."}
            }
        }) {
            Value::Object(m) => m,
            _ => unreachable!("the schema is an object"),
        };
        let echo = Tool::new("echo", "Echo the given message back", Arc::new(schema));
        BareEcho {
            tools: Arc::new(vec![echo]),
        }
    }
}

impl ServerHandler for BareEcho {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("warden-bare-echo", env!("CARGO_PKG_VERSION")),
        )
    }

    /// The same handshake as warden: every client stays on `initialize`.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name != "echo" {
            return Err(McpError::invalid_params(
                format!("unknown tool `{}`", request.name),
                Some(json!({"field": "name", "value": request.name})),
            ));
        }
        match request.arguments.as_ref().and_then(|a| a.get("message")) {
            Some(Value::String(s)) => {
                Ok(CallToolResult::success(vec![ContentBlock::text(s.clone())]).into())
            }
            _ => Err(McpError::invalid_params(
                "`message` must be a string",
                Some(json!({"field": "message"})),
            )),
        }
    }
}

fn main() -> std::process::ExitCode {
    // Default: the multi-thread runtime `#[tokio::main]` gives, as rmcp's examples
    // use it. `--current-thread`: the runtime flavour warden serves on by default.
    let mut builder = if std::env::args().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let outcome = rt.block_on(async {
        let running = BareEcho::new()
            .serve(rmcp::transport::stdio_pipes())
            .await
            .map_err(|e| format!("no session: {e}"))?;
        running
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| format!("session task failed: {e}"))
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-bare-echo: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
