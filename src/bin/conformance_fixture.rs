//! `warden-conformance-fixture`: a stdio MCP server with the tools,
//! resources, prompts and completion that the official conformance suite's
//! server scenarios (`@modelcontextprotocol/conformance` 0.1.16) call for,
//! each answering what the scenario's description asks, word for word.
//! warden fronts it with `prefix = ""` in tests/it/conformance.rs, so the
//! suite meets these names through the gateway.
//!
//! The tools that need the client (`test_sampling`, `test_elicitation*`)
//! send it `sampling/createMessage` or `elicitation/create` as the suite's
//! descriptions say, and answer an error when the client (warden, for its
//! client) did not declare the capability or answered one.

use std::borrow::Cow;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, Prompt, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceTemplate, ServerCapabilities,
    ServerConfig, ServerRequest, SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// A string argument of a tool call ("" when missing).
fn arg(request: &CallToolRequestParams, name: &str) -> String {
    request
        .arguments
        .as_ref()
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A 1×1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV header with no samples.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=";

fn from<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the fixture's literal is a valid MCP value")
}

fn tool(name: &str, description: &str, schema: Value) -> Tool {
    from(json!({"name": name, "description": description, "inputSchema": schema}))
}

fn no_args() -> Value {
    json!({"type": "object", "properties": {}})
}

fn result(value: Value) -> Result<CallToolResponse, McpError> {
    Ok(from::<CallToolResult>(value).into())
}

fn text(s: &str) -> Result<CallToolResponse, McpError> {
    result(json!({"content": [{"type": "text", "text": s}]}))
}

#[derive(Clone)]
struct Conformance;

impl Conformance {
    fn tools() -> Vec<Tool> {
        vec![
            tool("test_simple_text", "Returns simple text", no_args()),
            tool("test_image_content", "Returns an image", no_args()),
            tool("test_audio_content", "Returns audio", no_args()),
            tool(
                "test_embedded_resource",
                "Returns an embedded resource",
                no_args(),
            ),
            tool(
                "test_multiple_content_types",
                "Returns text, an image and a resource",
                no_args(),
            ),
            tool(
                "test_tool_with_logging",
                "Sends three log messages",
                no_args(),
            ),
            tool(
                "test_tool_with_progress",
                "Reports progress 0, 50, 100 of 100",
                no_args(),
            ),
            tool("test_error_handling", "Always fails", no_args()),
            tool(
                "test_sampling",
                "Asks the client's LLM",
                json!({"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}),
            ),
            tool(
                "test_elicitation",
                "Asks the user",
                json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
            ),
            tool(
                "test_elicitation_sep1034_defaults",
                "Asks the user, with defaults",
                no_args(),
            ),
            tool(
                "test_elicitation_sep1330_enums",
                "Asks the user, with enums",
                no_args(),
            ),
            tool(
                "json_schema_2020_12_tool",
                "Tool with JSON Schema 2020-12 features",
                json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "$defs": {"address": {"type": "object", "properties": {
                        "street": {"type": "string"}, "city": {"type": "string"}}}},
                    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                    "additionalProperties": false
                }),
            ),
        ]
    }

    // Logging is deprecated by SEP-2577; the suite still tests it.
    #[allow(deprecated)]
    async fn logging(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        for (i, message) in [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed",
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let param = rmcp::model::LoggingMessageNotificationParam::new(
                rmcp::model::LoggingLevel::Info,
                Value::String(message.into()),
            )
            .with_logger("conformance");
            let _ = context.peer.notify_logging_message(param).await;
        }
        text("Tool with logging executed successfully")
    }

    async fn progress(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let token = context.meta.get_progress_token();
        for (i, p) in [0.0, 50.0, 100.0].into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(token) = &token {
                let param = ProgressNotificationParam::new(token.clone(), p).with_total(100.0);
                let _ = context.peer.notify_progress(param).await;
            }
        }
        text("Tool with progress executed successfully")
    }

    /// Sends the client `request` (built from JSON) and returns its answer as
    /// JSON, or the error result the tool answers.
    async fn ask_client(
        &self,
        context: &RequestContext<RoleServer>,
        capability: &str,
        request: Value,
    ) -> Result<Value, CallToolResponse> {
        let fail = |why: String| {
            CallToolResponse::from(CallToolResult::error(vec![
                rmcp::model::ContentBlock::text(why),
            ]))
        };
        let caps = context.peer.peer_info().map(|i| i.capabilities.clone());
        let has = match capability {
            "sampling" => caps.is_some_and(|c| c.sampling.is_some()),
            _ => caps.is_some_and(|c| c.elicitation.is_some()),
        };
        if !has {
            return Err(fail(format!("the client does not support {capability}")));
        }
        let request = serde_json::from_value::<ServerRequest>(request)
            .map_err(|e| fail(format!("the fixture built a bad request: {e}")))?;
        match context.peer.send_request(request).await {
            Ok(answer) => serde_json::to_value(answer).map_err(|e| fail(e.to_string())),
            Err(e) => Err(fail(format!("the client answered an error: {e}"))),
        }
    }

    async fn sampling(
        &self,
        context: &RequestContext<RoleServer>,
        prompt: &str,
    ) -> Result<CallToolResponse, McpError> {
        let request = json!({"method": "sampling/createMessage", "params": {
            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
            "maxTokens": 100
        }});
        match self.ask_client(context, "sampling", request).await {
            Ok(answer) => {
                let said = answer["content"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                text(&format!("LLM response: {said}"))
            }
            Err(failed) => Ok(failed),
        }
    }

    async fn elicitation(
        &self,
        context: &RequestContext<RoleServer>,
        tool: &str,
        message: &str,
    ) -> Result<CallToolResponse, McpError> {
        let schema = match tool {
            "test_elicitation" => json!({
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"}
                },
                "required": ["username", "email"]
            }),
            "test_elicitation_sep1034_defaults" => json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "default": "John Doe"},
                    "age": {"type": "integer", "default": 30},
                    "score": {"type": "number", "default": 95.5},
                    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                    "verified": {"type": "boolean", "default": true}
                }
            }),
            _ => json!({
                "type": "object",
                "properties": {
                    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                    "titledSingle": {"type": "string", "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"}
                    ]},
                    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"]},
                    "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                    "titledMulti": {"type": "array", "items": {"anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"}
                    ]}}
                }
            }),
        };
        let request = json!({"method": "elicitation/create", "params": {
            "mode": "form", "message": message, "requestedSchema": schema
        }});
        match self.ask_client(context, "elicitation", request).await {
            Ok(answer) => {
                let action = answer["action"].as_str().unwrap_or("?").to_string();
                let content = answer["content"].to_string();
                if tool == "test_elicitation" {
                    text(&format!(
                        "User response: <action: {action}, content: {content}>"
                    ))
                } else {
                    text(&format!(
                        "Elicitation completed: action={action}, content={content}"
                    ))
                }
            }
            Err(failed) => Ok(failed),
        }
    }
}

impl ServerHandler for Conformance {
    // Logging is deprecated by SEP-2577; the suite still tests it.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_completions()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new(
            "warden-conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(Self::tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        match request.name.as_ref() {
            "test_simple_text" => text("This is a simple text response for testing."),
            "test_image_content" => result(
                json!({"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]}),
            ),
            "test_audio_content" => result(
                json!({"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]}),
            ),
            "test_embedded_resource" => {
                result(json!({"content": [{"type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain",
                "text": "This is an embedded resource content."}}]}))
            }
            "test_multiple_content_types" => result(json!({"content": [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": PNG, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                    "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}
            ]})),
            "test_tool_with_logging" => self.logging(&context).await,
            "test_tool_with_progress" => self.progress(&context).await,
            "test_error_handling" => result(json!({"isError": true, "content": [
                {"type": "text", "text": "This tool intentionally returns an error for testing"}]})),
            "test_sampling" => {
                let prompt = arg(&request, "prompt");
                self.sampling(&context, &prompt).await
            }
            "test_elicitation" => {
                let message = arg(&request, "message");
                self.elicitation(&context, "test_elicitation", &message)
                    .await
            }
            tool @ ("test_elicitation_sep1034_defaults" | "test_elicitation_sep1330_enums") => {
                self.elicitation(&context, tool, "Please review these fields")
                    .await
            }
            "json_schema_2020_12_tool" => text("ok"),
            other => Err(McpError::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let resource = |uri: &str, name: &str, description: &str, mime: &str| -> Resource {
            from(json!({"uri": uri, "name": name, "description": description, "mimeType": mime}))
        };
        Ok(ListResourcesResult::with_all_items(vec![
            resource(
                "test://static-text",
                "static-text",
                "A static text resource",
                "text/plain",
            ),
            resource(
                "test://static-binary",
                "static-binary",
                "A static binary resource",
                "image/png",
            ),
            resource(
                "test://watched-resource",
                "watched-resource",
                "A resource to subscribe to",
                "text/plain",
            ),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![from::<
            ResourceTemplate,
        >(
            json!({
            "uriTemplate": "test://template/{id}/data", "name": "template",
            "description": "Data for an id", "mimeType": "application/json"
        })
        )]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => json!({"uri": uri, "mimeType": "text/plain",
                "text": "This is the content of the static text resource."}),
            "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG}),
            "test://watched-resource" => {
                json!({"uri": uri, "mimeType": "text/plain", "text": "watched"})
            }
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|r| r.strip_suffix("/data"))
            {
                Some(id) if !id.is_empty() && !id.contains('/') => json!({"uri": uri,
                    "mimeType": "application/json",
                    "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()}),
                _ => {
                    return Err(McpError::resource_not_found(
                        format!("no resource `{uri}`"),
                        Some(json!({"uri": uri})),
                    ))
                }
            },
        };
        Ok(from::<ReadResourceResult>(json!({"contents": [contents]})).into())
    }

    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let prompt = |name: &str, description: &str, args: Value| -> Prompt {
            from(json!({"name": name, "description": description, "arguments": args}))
        };
        let arg = |name: &str, description: &str| json!({"name": name, "description": description, "required": true});
        Ok(ListPromptsResult::with_all_items(vec![
            prompt(
                "test_simple_prompt",
                "A prompt without arguments",
                json!([]),
            ),
            prompt(
                "test_prompt_with_arguments",
                "A prompt with two arguments",
                json!([
                    arg("arg1", "First test argument"),
                    arg("arg2", "Second test argument")
                ]),
            ),
            prompt(
                "test_prompt_with_embedded_resource",
                "A prompt embedding a resource",
                json!([arg("resourceUri", "URI of the resource to embed")]),
            ),
            prompt(
                "test_prompt_with_image",
                "A prompt with an image",
                json!([]),
            ),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let arg = |name: &str| -> Result<String, McpError> {
            match args.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(McpError::invalid_params(
                    format!("`{name}` must be a string"),
                    None,
                )),
            }
        };
        let user = |content: Value| json!({"role": "user", "content": content});
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([user(
                json!({"type": "text", "text": "This is a simple prompt for testing."})
            )]),
            "test_prompt_with_arguments" => json!([user(json!({"type": "text",
                "text": format!("Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1")?, arg("arg2")?)}))]),
            "test_prompt_with_embedded_resource" => json!([
                user(
                    json!({"type": "resource", "resource": {"uri": arg("resourceUri")?,
                    "mimeType": "text/plain", "text": "Embedded resource content for testing."}})
                ),
                user(
                    json!({"type": "text", "text": "Please process the embedded resource above."})
                ),
            ]),
            "test_prompt_with_image" => json!([
                user(json!({"type": "image", "data": PNG, "mimeType": "image/png"})),
                user(json!({"type": "text", "text": "Please analyze the image above."})),
            ]),
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown prompt `{other}`"),
                    None,
                ))
            }
        };
        Ok(from::<GetPromptResult>(json!({"messages": messages})).into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let words = ["paris", "park", "party", "test", "testing"];
        let typed = request.argument.value.as_str();
        let values: Vec<&str> = words.into_iter().filter(|w| w.starts_with(typed)).collect();
        Ok(from(
            json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}),
        ))
    }
}

fn main() -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let outcome = rt.block_on(async {
        let running = Conformance
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
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-conformance-fixture: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
