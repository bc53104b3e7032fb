//! A server's lists, as warden exports them: tools and prompts renamed
//! `<prefix>_<name>`, resources under their own URIs, each definition kept
//! whole as JSON for the protocol layer to list.

use std::sync::Arc;

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Map, Value};

use crate::config::valid_tool_name;
use crate::core::catalog::{self, Catalog, Definition, Export};

/// Renames what a server listed for export; names that would not be valid
/// tool names are skipped, and said so.
pub fn build(
    prefix: &str,
    tools: Vec<Tool>,
    prompts: Vec<Prompt>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
) -> Catalog {
    let mut c = Catalog::default();
    for t in tools {
        let exported = format!("{prefix}_{}", t.name);
        if !valid_tool_name(&exported) {
            c.skipped.push(format!(
                "tool `{}`: `{exported}` does not match ^[a-zA-Z0-9_-]{{1,64}}$",
                t.name
            ));
            continue;
        }
        let downstream = Arc::from(t.name.as_ref());
        c.tools.push(export(&t, exported, downstream));
    }
    for p in prompts {
        let downstream = Arc::from(p.name.as_str());
        c.prompts
            .push(export(&p, format!("{prefix}_{}", p.name), downstream));
    }
    for r in resources {
        c.resources.push(catalog::Resource {
            uri: r.uri.clone(),
            def: renamed(&r, prefix),
        });
    }
    for t in templates {
        c.templates.push(catalog::Template {
            uri_template: t.uri_template.clone(),
            def: renamed(&t, prefix),
        });
    }
    c
}

/// A list request the server did not answer with its list.
#[derive(Debug, thiserror::Error)]
#[error("{list}/list failed: {source}")]
pub struct ListError {
    list: &'static str,
    source: rmcp::service::ServiceError,
}

/// Lists the server's tools, and its prompts, resources and templates when
/// its capabilities say it has them.
pub async fn list_everything(peer: &Peer<RoleClient>, prefix: &str) -> Result<Catalog, ListError> {
    let failed = |list| move |source| ListError { list, source };
    let caps = peer.peer_info().map(|i| i.capabilities.clone());
    let has = |f: fn(&rmcp::model::ServerCapabilities) -> bool| caps.as_ref().is_some_and(f);
    let tools = if has(|c| c.tools.is_some()) {
        peer.list_all_tools().await.map_err(failed("tools"))?
    } else {
        Vec::new()
    };
    let prompts = if has(|c| c.prompts.is_some()) {
        peer.list_all_prompts().await.map_err(failed("prompts"))?
    } else {
        Vec::new()
    };
    let (resources, templates) = if has(|c| c.resources.is_some()) {
        (
            peer.list_all_resources()
                .await
                .map_err(failed("resources"))?,
            peer.list_all_resource_templates()
                .await
                .map_err(failed("resources/templates"))?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(build(prefix, tools, prompts, resources, templates))
}

fn export(item: &impl serde::Serialize, name: String, downstream: Arc<str>) -> Export {
    let mut def = object(item);
    def.insert("name".into(), Value::String(name.clone()));
    Export {
        name: Arc::from(name),
        downstream,
        def: Arc::new(def),
    }
}

/// A resource's or template's definition, its name prefixed.
fn renamed(item: &impl serde::Serialize, prefix: &str) -> Definition {
    let mut def = object(item);
    if let Some(Value::String(name)) = def.get_mut("name") {
        *name = format!("{prefix}_{name}");
    }
    Arc::new(def)
}

fn object(item: &impl serde::Serialize) -> Map<String, Value> {
    match serde_json::to_value(item) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool::new(name.to_string(), "", Arc::new(Map::new()))
    }

    #[test]
    fn names_are_prefixed_and_the_invalid_ones_skipped() {
        let long = "x".repeat(62);
        let c = build(
            "ev",
            vec![tool("echo"), tool(&long), tool("has space")],
            vec![],
            vec![],
            vec![],
        );
        let names: Vec<&str> = c.tools.iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["ev_echo"]);
        assert_eq!(c.tool("ev_echo").map(|d| d.as_ref()), Some("echo"));
        assert_eq!(c.tools[0].def["name"], "ev_echo");
        assert_eq!(c.skipped.len(), 2, "{:?}", c.skipped);
        assert!(c.tool("echo").is_none());
    }

    #[test]
    fn changes_are_seen_per_list() {
        let a = build("p", vec![tool("a")], vec![], vec![], vec![]);
        let b = build("p", vec![tool("a"), tool("b")], vec![], vec![], vec![]);
        let changes = a.changes(&b);
        assert!(changes.tools && !changes.prompts && !changes.resources);
        let same = a.changes(&a);
        assert!(!same.tools && !same.prompts && !same.resources);
    }
}
