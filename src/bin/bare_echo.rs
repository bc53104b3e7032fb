//! `warden-bare-echo`: the benchmark baseline. A bare rmcp stdio MCP server
//! with one tool, `echo`, and nothing else: no supervision, no actors, no
//! logging. `scripts/bench` measures warden against it.
//!
//! `--http PORT`: the same over Streamable HTTP at http://127.0.0.1:PORT/mcp,
//! rmcp's `StreamableHttpService` on a plain axum listener with TCP_NODELAY
//! (the baseline for `warden serve --http`).

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

    /// The same versions as warden: up to 2026-07-28.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2026_07_28))
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
    let args: Vec<String> = std::env::args().collect();
    if let Some(port) = args
        .iter()
        .position(|a| a == "--http")
        .and_then(|i| args.get(i + 1))
    {
        let port: u16 = match port.parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("warden-bare-echo: --http wants a port, not `{port}`");
                return std::process::ExitCode::from(2);
            }
        };
        return match rt.block_on(serve_http(port)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("warden-bare-echo: {e}");
                std::process::ExitCode::from(1)
            }
        };
    }
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

/// Serves the echo over Streamable HTTP on 127.0.0.1:`port` until killed.
async fn serve_http(port: u16) -> Result<(), String> {
    use axum::serve::ListenerExt;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let service = StreamableHttpService::new(
        || Ok(BareEcho::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, router)
        .await
        .map_err(|e| format!("serving: {e}"))
}
