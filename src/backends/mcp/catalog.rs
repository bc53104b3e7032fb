//! A server's lists, as warden exports them: tools and prompts renamed
//! `<prefix>_<name>`, resources under their own URIs, each definition kept
//! whole as JSON for the protocol layer to list.

use std::sync::Arc;

use rmcp::model::{PaginatedRequestParams, Prompt, Resource, ResourceTemplate, Tool};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Map, Value};

use crate::config::{exported_name, valid_tool_name, ExportFilter};
use crate::core::catalog::{self, Catalog, Definition, Export};

/// Renames what a server listed for export; names that would not be valid
/// tool names, and a second tool under one name, are skipped and said so.
/// `filter` picks and renames the tools; a tool it names that the server
/// does not list is said too.
pub fn build(
    prefix: &str,
    filter: &ExportFilter,
    tools: Vec<Tool>,
    prompts: Vec<Prompt>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
) -> Catalog {
    let mut c = Catalog::default();
    for wanted in filter.only.iter().flatten().chain(filter.rename.keys()) {
        if !tools.iter().any(|t| t.name == *wanted) {
            c.skipped
                .push(format!("tool {wanted:?}: the server does not list it"));
        }
    }
    let mut twice = Vec::new();
    // Tools and prompts alike: an exported name reaches the client's
    // interface, and an ESC or a newline in it must not.
    let mut exported = |kind: &str, name: &str| {
        let exported = exported_name(prefix, name);
        if valid_tool_name(&exported) {
            return Some(exported);
        }
        c.skipped.push(format!(
            "{kind} {name:?}: `{}` does not match ^[a-zA-Z0-9_-]{{1,64}}$",
            exported.escape_debug()
        ));
        None
    };
    let mut names = std::collections::HashSet::new();
    let tools: Vec<_> = tools
        .into_iter()
        .filter_map(|t| {
            let name = exported("tool", filter.export(&t.name)?)?;
            if !names.insert(name.clone()) {
                twice.push(format!(
                    "tool {:?}: another of the server's tools is exported as `{name}`",
                    t.name
                ));
                return None;
            }
            Some((name, t))
        })
        .collect();
    let prompts: Vec<_> = prompts
        .into_iter()
        .filter_map(|p| Some((exported("prompt", &p.name)?, p)))
        .collect();
    c.skipped.append(&mut twice);
    for (name, t) in tools {
        let downstream = Arc::from(t.name.as_ref());
        c.tools.push(export(&t, name, downstream));
    }
    for (name, p) in prompts {
        let downstream = Arc::from(p.name.as_str());
        c.prompts.push(export(&p, name, downstream));
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

/// Pages of one list a server may send, at the most: a server that always
/// answers with a `nextCursor` would otherwise be listed until memory ran out.
const MAX_PAGES: usize = 1_000;
/// Items of one list, at the most, over all its pages (100k tools from one
/// server are served; ten times that is a bug or an attack).
const MAX_ITEMS: usize = 1_000_000;

/// A list the server did not answer with a whole list.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{list}/list failed: {source}")]
    Failed {
        list: &'static str,
        source: rmcp::service::ServiceError,
    },
    #[error("{list}/list gave the cursor {cursor:?} twice: it would never end")]
    RepeatedCursor { list: &'static str, cursor: String },
    #[error("{list}/list is longer than warden takes ({what})")]
    TooLong { list: &'static str, what: String },
}

/// Every page of one list, following `nextCursor`, bounded by [`MAX_PAGES`]
/// and [`MAX_ITEMS`]; a cursor seen before ends it with an error.
async fn all_pages<T, F, Fut>(list: &'static str, mut page: F) -> Result<Vec<T>, ListError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut:
        std::future::Future<Output = Result<(Vec<T>, Option<String>), rmcp::service::ServiceError>>,
{
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let (mut more, next) = page(cursor)
            .await
            .map_err(|source| ListError::Failed { list, source })?;
        if items.len() + more.len() > MAX_ITEMS {
            return Err(ListError::TooLong {
                list,
                what: format!("more than {MAX_ITEMS} items"),
            });
        }
        items.append(&mut more);
        match next {
            None => return Ok(items),
            Some(next) if !seen.insert(next.clone()) => {
                return Err(ListError::RepeatedCursor { list, cursor: next })
            }
            Some(next) => cursor = Some(next),
        }
    }
    Err(ListError::TooLong {
        list,
        what: format!("more than {MAX_PAGES} pages"),
    })
}

/// Lists the server's tools, and its prompts, resources and templates when
/// its capabilities say it has them.
pub async fn list_everything(
    peer: &Peer<RoleClient>,
    prefix: &str,
    filter: &ExportFilter,
) -> Result<Catalog, ListError> {
    let caps = peer.peer_info().map(|i| i.capabilities.clone());
    let has = |f: fn(&rmcp::model::ServerCapabilities) -> bool| caps.as_ref().is_some_and(f);
    let params = |cursor| Some(PaginatedRequestParams::default().with_cursor(cursor));
    let tools = if has(|c| c.tools.is_some()) {
        all_pages("tools", |cursor| async move {
            let r = peer.list_tools(params(cursor)).await?;
            Ok((r.tools, r.next_cursor))
        })
        .await?
    } else {
        Vec::new()
    };
    let prompts = if has(|c| c.prompts.is_some()) {
        all_pages("prompts", |cursor| async move {
            let r = peer.list_prompts(params(cursor)).await?;
            Ok((r.prompts, r.next_cursor))
        })
        .await?
    } else {
        Vec::new()
    };
    let (resources, templates) = if has(|c| c.resources.is_some()) {
        let resources = all_pages("resources", |cursor| async move {
            let r = peer.list_resources(params(cursor)).await?;
            Ok((r.resources, r.next_cursor))
        })
        .await?;
        let templates = all_pages("resources/templates", |cursor| async move {
            let r = peer.list_resource_templates(params(cursor)).await?;
            Ok((r.resource_templates, r.next_cursor))
        })
        .await?;
        (resources, templates)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(build(prefix, filter, tools, prompts, resources, templates))
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
        *name = exported_name(prefix, name);
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
            &ExportFilter::default(),
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
    fn a_filter_picks_and_renames_and_says_what_it_could_not() {
        let filter = ExportFilter {
            only: Some(vec!["a".into(), "b".into(), "gone".into()]),
            exclude: vec![],
            rename: [("a".to_string(), "b".to_string())].into(),
        };
        let c = build(
            "p",
            &filter,
            vec![tool("a"), tool("b"), tool("c")],
            vec![],
            vec![],
            vec![],
        );
        // `a` is exported as `p_b`; the server's own `b` would be a second `p_b`.
        let names: Vec<(&str, &str)> = c.tools.iter().map(|t| (&*t.name, &*t.downstream)).collect();
        assert_eq!(names, [("p_b", "a")]);
        assert_eq!(c.skipped.len(), 2, "{:?}", c.skipped);
        assert!(c.skipped[0].contains("\"gone\": the server does not list it"));
        assert!(c.skipped[1].contains("\"b\": another of the server's tools is exported as `p_b`"));
    }

    #[test]
    fn prompt_names_are_checked_like_tool_names() {
        let prompt = |name: &str| Prompt::new(name, None::<String>, None);
        let c = build(
            "ev",
            &ExportFilter::default(),
            vec![tool("bad\u{1b}]0;pwned\u{7}")],
            vec![
                prompt("greet"),
                prompt("evil\u{1b}[2J"),
                prompt("two\nlines"),
            ],
            vec![],
            vec![],
        );
        let names: Vec<&str> = c.prompts.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["ev_greet"]);
        assert_eq!(c.skipped.len(), 3, "{:?}", c.skipped);
        // What is said about them is escaped: no raw control character.
        for s in &c.skipped {
            assert!(!s.chars().any(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn changes_are_seen_per_list() {
        let a = build(
            "p",
            &ExportFilter::default(),
            vec![tool("a")],
            vec![],
            vec![],
            vec![],
        );
        let b = build(
            "p",
            &ExportFilter::default(),
            vec![tool("a"), tool("b")],
            vec![],
            vec![],
            vec![],
        );
        let changes = a.changes(&b);
        assert!(changes.tools && !changes.prompts && !changes.resources);
        let same = a.changes(&a);
        assert!(!same.tools && !same.prompts && !same.resources);
    }
}
