//! What an MCP server exports, as warden's clients see it: names prefixed,
//! definitions kept as the JSON objects the server sent (with the exported
//! name), so that the call path can route by name without knowing the
//! protocol's types. Kept while the server restarts, so the lists stay put.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A tool's or prompt's definition as a JSON object.
pub type Definition = Arc<Map<String, Value>>;

#[derive(Debug, Default)]
pub struct Catalog {
    /// Exported tools, in the server's order.
    pub tools: Vec<Export>,
    pub prompts: Vec<Export>,
    /// Resources keep their URIs (content refers to them); names are prefixed.
    pub resources: Vec<Resource>,
    pub templates: Vec<Template>,
    /// Names that could not be exported, with why.
    pub skipped: Vec<String>,
}

/// A tool or prompt, under the name warden exports it as.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub name: Arc<str>,
    /// Its name on the server.
    pub downstream: Arc<str>,
    pub def: Definition,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub uri: String,
    pub def: Definition,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub uri_template: String,
    pub def: Definition,
}

/// The catalog's counts, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exports {
    pub tools: usize,
    pub prompts: usize,
    pub resources: usize,
    pub resource_templates: usize,
    pub skipped: Vec<String>,
}

/// Which of a catalog's lists differ from another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

impl Catalog {
    /// The downstream name of an exported tool.
    pub fn tool(&self, exported: &str) -> Option<&Arc<str>> {
        find(&self.tools, exported)
    }

    /// The downstream name of an exported prompt.
    pub fn prompt(&self, exported: &str) -> Option<&Arc<str>> {
        find(&self.prompts, exported)
    }

    /// Whether this server lists exactly this resource.
    pub fn lists_uri(&self, uri: &str) -> bool {
        self.resources.iter().any(|r| r.uri == uri)
    }

    /// How specifically a template of this server could produce `uri`: the
    /// length of the longest template text before its first `{` that `uri`
    /// starts with; `None` when no template matches.
    pub fn template_match(&self, uri: &str) -> Option<usize> {
        self.templates
            .iter()
            .map(|t| t.uri_template.split('{').next().unwrap_or(""))
            .filter(|head| !head.is_empty() && uri.starts_with(head))
            .map(str::len)
            .max()
    }

    /// What of this catalog another server's would answer instead or also:
    /// its listed URIs that `other`'s templates match, for the warning.
    pub fn overlaps(&self, other: &Catalog) -> Vec<String> {
        self.resources
            .iter()
            .filter(|r| other.template_match(&r.uri).is_some())
            .map(|r| r.uri.clone())
            .collect()
    }

    pub fn changes(&self, other: &Catalog) -> Changes {
        Changes {
            tools: self.tools != other.tools,
            prompts: self.prompts != other.prompts,
            resources: self.resources != other.resources || self.templates != other.templates,
        }
    }

    pub fn summary(&self) -> Exports {
        Exports {
            tools: self.tools.len(),
            prompts: self.prompts.len(),
            resources: self.resources.len(),
            resource_templates: self.templates.len(),
            skipped: self.skipped.clone(),
        }
    }
}

fn find<'a>(exports: &'a [Export], name: &str) -> Option<&'a Arc<str>> {
    exports
        .iter()
        .find(|e| &*e.name == name)
        .map(|e| &e.downstream)
}
