//! `warden-mcp-fixture`: a deliberately misbehaving MCP server (stdio) for the
//! integration tests of warden's MCP gateway.
//!
//! It runs on a current-thread runtime, so a tool that blocks the thread
//! (`wedge`) stalls everything: reading stdin, answering pings, other calls.
//!
//! Flags (all optional, in any order):
//!
//! --pidfile PATH              append `<pid>\n` to PATH at start
//! --stderr-at-start N         write N lines `fixture stderr line K` to stderr
//! --env-to-stderr NAME        write `NAME=<value of $NAME>` to stderr
//! --exit-at-start CODE        exit CODE before serving (after the three above)
//! --garbage-first             write `this is not json` to stdout before serving
//! --exit-on-initialize CODE   exit CODE when `initialize` arrives, unanswered
//! --extra-tool                start with the `extra` tool listed
//! --on-clean-exit PATH        append `clean exit` to PATH when the session
//!                             ends because stdin closed
//! --grandchild                start `sleep 600` below itself (as `npx` starts
//!                             `node`) and append its pid to the pidfile too
//! --escapee                   also start `sleep 600` in a session of its own
//!                             (as self-daemonizing helpers do), pid appended
//! --endless-tools MODE        tools/list always has a nextCursor: a new one
//!                             each page (`new`) or the same (`same`)
//!
//! Tools:
//!
//! echo {message}              text `message`
//! add {a, b}                  text `<sum>`, structured content {"sum": a+b}
//! fail {message}              an `isError` result with text `message`
//! media {}                    text, image, audio and embedded-resource blocks
//! progress {steps, ms}        a progress notification per step, ms apart;
//!                             text `done <steps>`
//! log {message, level?}       a `notifications/message` (logger `fixture`);
//!                             text `logged`
//! sleep {ms, marker?}         text `slept <ms>`; if cancelled first, append
//!                             `cancelled` to `marker` and return an error
//! crash {code?}               exit code (default 3) at once
//! hang {}                     never answers, ignores cancellation
//! wedge {}                    blocks the runtime thread forever
//! leak {mib}                  allocate and hold mib MiB more; text
//!                             `holding <total> MiB`
//! flood_stderr {lines}        write `flood K` lines to stderr; text
//!                             `flooded <lines>`
//! garbage {}                  write `garbage {not json` to stdout raw; text
//!                             `garbage sent`
//! change_tools {}             toggle `extra`, send tools/list_changed; text
//!                             `tools changed`
//! extra {}                    (only when toggled on) text `extra`
//! pid {}                      text of the process id
//! touch {uri}                 send notifications/resources/updated for uri
//! subscriptions {}            the resources/subscribe and unsubscribe seen,
//!                             one `subscribe URI` / `unsubscribe URI` a line
//!
//! Prompts: `greet {name}` gives one user message `Hello, <name>!`.
//! Resources: `fixture://hello` (text `hello from the fixture`) and the
//! template `fixture://item/{id}` (text `item <id>`).

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, InitializeRequestParams, InitializeResult,
    JsonObject, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, Prompt, PromptArgument,
    PromptMessage, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde_json::{json, Value};

/// The memory `leak` holds: a static, so it stays resident until exit.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The command-line flags.
#[derive(Default)]
struct Options {
    pidfile: Option<String>,
    garbage_first: bool,
    exit_at_start: Option<i32>,
    exit_on_initialize: Option<i32>,
    stderr_at_start: u64,
    env_to_stderr: Vec<String>,
    extra_tool: bool,
    grandchild: bool,
    escapee: bool,
    on_clean_exit: Option<String>,
    endless_tools: Option<String>,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut opts = Options::default();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--pidfile" => opts.pidfile = Some(value()?),
                "--garbage-first" => opts.garbage_first = true,
                "--exit-at-start" => opts.exit_at_start = Some(parse_num(&flag, &value()?)?),
                "--exit-on-initialize" => {
                    opts.exit_on_initialize = Some(parse_num(&flag, &value()?)?)
                }
                "--stderr-at-start" => opts.stderr_at_start = parse_num(&flag, &value()?)?,
                "--env-to-stderr" => opts.env_to_stderr.push(value()?),
                "--extra-tool" => opts.extra_tool = true,
                "--grandchild" => opts.grandchild = true,
                "--escapee" => opts.escapee = true,
                "--on-clean-exit" => opts.on_clean_exit = Some(value()?),
                "--endless-tools" => opts.endless_tools = Some(value()?),
                _ => return Err(format!("unknown flag `{flag}`")),
            }
        }
        Ok(opts)
    }
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a number"))
}

/// An `inputSchema` from a JSON object literal.
fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(m) => Arc::new(m),
        _ => unreachable!("a schema is an object"),
    }
}

/// A schema with no arguments.
fn no_args() -> Arc<JsonObject> {
    schema(json!({"type": "object", "properties": {}}))
}

fn text(s: impl Into<String>) -> Result<CallToolResponse, McpError> {
    Ok(CallToolResult::success(vec![ContentBlock::text(s)]).into())
}

fn bad_arg(name: &str, want: &str) -> McpError {
    McpError::invalid_params(
        format!("`{name}` must be {want}"),
        Some(json!({"field": name})),
    )
}

/// The tool call's arguments, with typed getters.
struct Args(JsonObject);

impl Args {
    fn str(&self, name: &str) -> Result<String, McpError> {
        self.opt_str(name)?.ok_or_else(|| bad_arg(name, "a string"))
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>, McpError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad_arg(name, "a string")),
        }
    }

    fn uint(&self, name: &str) -> Result<u64, McpError> {
        self.opt_uint(name)?
            .ok_or_else(|| bad_arg(name, "a non-negative integer"))
    }

    fn opt_uint(&self, name: &str) -> Result<Option<u64>, McpError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad_arg(name, "a non-negative integer")),
        }
    }

    fn number(&self, name: &str) -> Result<&serde_json::Number, McpError> {
        match self.0.get(name) {
            Some(Value::Number(n)) => Ok(n),
            _ => Err(bad_arg(name, "a number")),
        }
    }
}

#[derive(Clone)]
struct Fixture {
    /// `subscribe URI` and `unsubscribe URI`, as they came.
    subscriptions: Arc<Mutex<Vec<String>>>,
    tools: Arc<Vec<Tool>>,
    extra: Arc<Tool>,
    extra_enabled: Arc<AtomicBool>,
    exit_on_initialize: Option<i32>,
    endless_tools: Option<String>,
}

impl Fixture {
    fn new(opts: &Options) -> Self {
        let message = |what: &str| {
            schema(json!({
                "type": "object",
                "required": ["message"],
                "properties": {"message": {"type": "string", "description": what}}
            }))
        };
        let tools = vec![
            Tool::new(
                "echo",
                "Echo the message back",
                message("The text to send back."),
            ),
            Tool::new(
                "add",
                "Add two numbers",
                schema(json!({
                    "type": "object",
                    "required": ["a", "b"],
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}}
                })),
            ),
            Tool::new(
                "fail",
                "Return a tool error with the message",
                message("The error text."),
            ),
            Tool::new(
                "media",
                "Return text, image, audio and embedded-resource content",
                no_args(),
            ),
            Tool::new(
                "progress",
                "Send a progress notification per step, ms apart",
                schema(json!({
                    "type": "object",
                    "required": ["steps", "ms"],
                    "properties": {
                        "steps": {"type": "integer", "minimum": 0},
                        "ms": {"type": "integer", "minimum": 0}
                    }
                })),
            ),
            Tool::new(
                "log",
                "Send a logging notification",
                schema(json!({
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "level": {"type": "string", "description": "Default: info."}
                    }
                })),
            ),
            Tool::new(
                "sleep",
                "Wait ms milliseconds unless cancelled",
                schema(json!({
                    "type": "object",
                    "required": ["ms"],
                    "properties": {
                        "ms": {"type": "integer", "minimum": 0},
                        "marker": {
                            "type": "string",
                            "description": "A file to append `cancelled` to on cancellation."
                        }
                    }
                })),
            ),
            Tool::new(
                "crash",
                "Exit the process at once",
                schema(json!({
                    "type": "object",
                    "properties": {"code": {"type": "integer", "description": "Default: 3."}}
                })),
            ),
            Tool::new("hang", "Never answer", no_args()),
            Tool::new("wedge", "Block the runtime thread forever", no_args()),
            Tool::new(
                "leak",
                "Allocate and hold more memory",
                schema(json!({
                    "type": "object",
                    "required": ["mib"],
                    "properties": {"mib": {"type": "integer", "minimum": 0}}
                })),
            ),
            Tool::new(
                "flood_stderr",
                "Write many lines to stderr",
                schema(json!({
                    "type": "object",
                    "required": ["lines"],
                    "properties": {"lines": {"type": "integer", "minimum": 0}}
                })),
            ),
            Tool::new("garbage", "Write a non-JSON line to stdout", no_args()),
            Tool::new(
                "change_tools",
                "Toggle the `extra` tool and notify tools/list_changed",
                no_args(),
            ),
            Tool::new("pid", "Return the process id", no_args()),
            Tool::new(
                "touch",
                "Send notifications/resources/updated for a URI",
                schema(json!({
                    "type": "object",
                    "required": ["uri"],
                    "properties": {"uri": {"type": "string"}}
                })),
            ),
            Tool::new(
                "subscriptions",
                "The resources/subscribe and unsubscribe requests seen",
                no_args(),
            ),
        ];
        Fixture {
            subscriptions: Arc::default(),
            tools: Arc::new(tools),
            extra: Arc::new(Tool::new(
                "extra",
                "Present only when toggled on",
                no_args(),
            )),
            extra_enabled: Arc::new(AtomicBool::new(opts.extra_tool)),
            exit_on_initialize: opts.exit_on_initialize,
            endless_tools: opts.endless_tools.clone(),
        }
    }

    async fn progress(
        &self,
        args: &Args,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let steps = args.uint("steps")?;
        let ms = args.uint("ms")?;
        let token = context.meta.get_progress_token();
        for i in 1..=steps {
            if let Some(token) = &token {
                let param = ProgressNotificationParam::new(token.clone(), i as f64)
                    .with_total(steps as f64)
                    .with_message(format!("step {i}"));
                // A lost notification is the client's problem, not the tool's.
                let _ = context.peer.notify_progress(param).await;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        text(format!("done {steps}"))
    }

    // Logging is deprecated by SEP-2577, but warden still forwards it.
    #[allow(deprecated)]
    async fn log(
        &self,
        args: &Args,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let message = args.str("message")?;
        let level = args.opt_str("level")?.unwrap_or_else(|| "info".into());
        let level: rmcp::model::LoggingLevel = serde_json::from_value(Value::String(level))
            .map_err(|_| bad_arg("level", "a logging level (debug, info, warning, ...)"))?;
        let param =
            rmcp::model::LoggingMessageNotificationParam::new(level, Value::String(message))
                .with_logger("fixture");
        let _ = context.peer.notify_logging_message(param).await;
        text("logged")
    }

    async fn sleep(
        &self,
        args: &Args,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let ms = args.uint("ms")?;
        let marker = args.opt_str("marker")?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => text(format!("slept {ms}")),
            _ = context.ct.cancelled() => {
                if let Some(path) = marker {
                    let mut file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| McpError::internal_error(format!("{path}: {e}"), None))?;
                    writeln!(file, "cancelled")
                        .map_err(|e| McpError::internal_error(format!("{path}: {e}"), None))?;
                }
                Ok(CallToolResult::error(vec![ContentBlock::text("cancelled")]).into())
            }
        }
    }
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new(
            "warden-mcp-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    /// The same handshake as warden: every client stays on `initialize`.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        if let Some(code) = self.exit_on_initialize {
            std::process::exit(code);
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut tools = self.tools.as_ref().clone();
        if self.extra_enabled.load(Ordering::SeqCst) {
            tools.push(self.extra.as_ref().clone());
        }
        let mut result = ListToolsResult::with_all_items(tools);
        // Pagination that never ends: a fresh cursor every page, or one cursor again.
        result.next_cursor = match self.endless_tools.as_deref() {
            Some("same") => Some("again".into()),
            Some(_) => {
                let page = request
                    .and_then(|r| r.cursor)
                    .and_then(|c| c.strip_prefix("page-")?.parse::<u64>().ok())
                    .unwrap_or(0);
                Some(format!("page-{}", page + 1))
            }
            None => None,
        };
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = Args(request.arguments.clone().unwrap_or_default());
        match request.name.as_ref() {
            "echo" => text(args.str("message")?),
            "add" => {
                let (a, b) = (args.number("a")?, args.number("b")?);
                // Integers stay integers, so `{"sum": 5}` compares equal in tests.
                let sum = match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) if a.checked_add(b).is_some() => json!(a + b),
                    _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
                };
                let mut result = CallToolResult::success(vec![ContentBlock::text(sum.to_string())]);
                result.structured_content = Some(json!({ "sum": sum }));
                Ok(result.into())
            }
            "fail" => {
                Ok(CallToolResult::error(vec![ContentBlock::text(args.str("message")?)]).into())
            }
            "media" => Ok(CallToolResult::success(vec![
                ContentBlock::text("media"),
                // The PNG signature and a RIFF/WAVE header: a few real-looking bytes.
                ContentBlock::image("iVBORw0KGgo=", "image/png"),
                ContentBlock::audio("UklGRiQAAABXQVZF", "audio/wav"),
                ContentBlock::embedded_text("fixture://embedded", "embedded text"),
            ])
            .into()),
            "progress" => self.progress(&args, &context).await,
            "log" => self.log(&args, &context).await,
            "sleep" => self.sleep(&args, &context).await,
            "crash" => {
                let code = args.opt_uint("code")?.unwrap_or(3);
                std::process::exit(i32::try_from(code).unwrap_or(3));
            }
            "hang" => std::future::pending().await,
            "wedge" => loop {
                // Blocks the only runtime thread on purpose: nothing else runs.
                std::thread::sleep(Duration::from_secs(3600));
            },
            "leak" => {
                let mib = args.uint("mib")?;
                let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
                for _ in 0..mib {
                    // Non-zero bytes: every page is touched, so it is resident.
                    held.push(vec![0x5a; 1 << 20]);
                }
                text(format!("holding {} MiB", held.len()))
            }
            "flood_stderr" => {
                let lines = args.uint("lines")?;
                let mut err = std::io::stderr().lock();
                for k in 1..=lines {
                    let _ = writeln!(err, "flood {k}");
                }
                let _ = err.flush();
                text(format!("flooded {lines}"))
            }
            "garbage" => {
                // Straight to stdout, interleaved with the protocol on purpose.
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(b"garbage {not json\n");
                let _ = out.flush();
                text("garbage sent")
            }
            "change_tools" => {
                self.extra_enabled.fetch_xor(true, Ordering::SeqCst);
                let _ = context.peer.notify_tool_list_changed().await;
                text("tools changed")
            }
            "extra" if self.extra_enabled.load(Ordering::SeqCst) => text("extra"),
            "pid" => text(std::process::id().to_string()),
            "touch" => {
                let uri = args.str("uri")?;
                let _ = context
                    .peer
                    .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(
                        uri,
                    ))
                    .await;
                text("touched")
            }
            "subscriptions" => text(self.subscriptions.lock().unwrap().join("\n")),
            _ => Err(McpError::invalid_params(
                format!("unknown tool `{}`", request.name),
                Some(json!({"field": "name", "value": request.name})),
            )),
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let name = PromptArgument::new("name")
            .with_description("Who to greet")
            .with_required(true);
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "greet",
            Some("Greet someone by name"),
            Some(vec![name]),
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != "greet" {
            return Err(McpError::invalid_params(
                format!("unknown prompt `{}`", request.name),
                Some(json!({"field": "name", "value": request.name})),
            ));
        }
        let name = match request.arguments.as_ref().and_then(|a| a.get("name")) {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(bad_arg("name", "a string")),
        };
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(
            Role::User,
            format!("Hello, {name}!"),
        )])
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![Resource::new(
            "fixture://hello",
            "hello",
        )
        .with_mime_type("text/plain")]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("fixture://item/{id}", "item").with_mime_type("text/plain"),
        ]))
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let line = format!("subscribe {}", request.uri);
        self.subscriptions.lock().unwrap().push(line);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let line = format!("unsubscribe {}", request.uri);
        self.subscriptions.lock().unwrap().push(line);
        Ok(())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let body = if uri == "fixture://hello" {
            "hello from the fixture".to_string()
        } else if let Some(id) = uri
            .strip_prefix("fixture://item/")
            .filter(|id| !id.is_empty())
        {
            format!("item {id}")
        } else {
            return Err(McpError::resource_not_found(
                format!("no resource `{uri}`"),
                Some(json!({"uri": uri})),
            ));
        };
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(body, uri).with_mime_type("text/plain")
        ])
        .into())
    }
}

/// Everything the flags ask for before serving.
fn before_serving(opts: &Options) -> std::io::Result<()> {
    if let Some(path) = &opts.pidfile {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        // One write per line: servers started together share the file, and
        // `writeln!` may split a line into several writes that interleave.
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        if opts.grandchild {
            // Left running on purpose: it stands for what a server starts itself.
            #[allow(clippy::zombie_processes)]
            let sleeper = std::process::Command::new("sleep")
                .arg("600")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()?;
            file.write_all(format!("{}\n", sleeper.id()).as_bytes())?;
        }
        if opts.escapee {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("600")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
            }
            #[allow(clippy::zombie_processes)]
            let sleeper = cmd.spawn()?;
            file.write_all(format!("{}\n", sleeper.id()).as_bytes())?;
        }
    }
    {
        let mut err = std::io::stderr().lock();
        for k in 1..=opts.stderr_at_start {
            writeln!(err, "fixture stderr line {k}")?;
        }
        for name in &opts.env_to_stderr {
            let value = std::env::var(name).unwrap_or_default();
            writeln!(err, "{name}={value}")?;
        }
    }
    // After the pidfile and stderr, so tests can see a process that exits at once.
    if let Some(code) = opts.exit_at_start {
        std::process::exit(code);
    }
    if opts.garbage_first {
        let mut out = std::io::stdout().lock();
        out.write_all(b"this is not json\n")?;
        out.flush()?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let opts = match Options::parse() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("warden-mcp-fixture: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = before_serving(&opts) {
        eprintln!("warden-mcp-fixture: {e}");
        return std::process::ExitCode::from(1);
    }
    // One thread: `wedge` must stall reading stdin and answering pings too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let outcome = rt.block_on(async {
        let running = Fixture::new(&opts)
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| format!("no session: {e}"))?;
        running
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| format!("session task failed: {e}"))
    });
    match outcome {
        Ok(()) => {
            if let Some(path) = &opts.on_clean_exit {
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| writeln!(f, "clean exit"));
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warden-mcp-fixture: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
