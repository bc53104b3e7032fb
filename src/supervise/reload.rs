//! The reloader: one task that applies reloads one at a time, whichever of
//! the three triggers asked (`warden reload` over the control socket, SIGHUP,
//! or, with `[server] watch`, a changed file), along one path:
//!
//! 1. read and check the whole new set as `warden check` does; an invalid set
//!    is refused whole and the running one keeps serving;
//! 2. plan the next generation (`core::reload::plan`): unchanged tools keep
//!    their entries, actors and children;
//! 3. start the actors of the new and changed tools, and give them a moment
//!    to be running (an MCP server's handshake) before any call reaches them;
//! 4. swap the registry in: new calls go to the new generation;
//! 5. retire what was replaced or removed: the tools supervisor stops each
//!    retired actor once its calls in flight are answered;
//! 6. tell every session which lists changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::mpsc;

use crate::core::names;
use crate::core::registry::{ToolEntry, ToolState};
use crate::core::reload::{self, Outcome, Trigger};
use crate::core::runtime::Runtime;
use crate::core::session::Notice;
use crate::supervise::tools::ToolsSupervisorMsg;

/// How long the new actors get to be running before the swap; a server
/// slower than this answers `unavailable` (starting) until it is.
const START_WAIT: Duration = Duration::from_secs(5);
/// How long the tools supervisor may take to spawn the new actors.
const SPAWN_DEADLINE: Duration = Duration::from_secs(2);
/// A watched change waits for this much quiet (editors write in steps)...
const DEBOUNCE: Duration = Duration::from_millis(300);
/// ...but no longer than this after the first event.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// The signal handler and the file watcher, in place before the tree
/// starts: a SIGHUP or an edit from then on is a reload, never lost.
pub struct Triggers {
    hup: Option<tokio::signal::unix::Signal>,
    watcher: Option<notify::RecommendedWatcher>,
    changes: Option<mpsc::Receiver<()>>,
}

/// Installs the SIGHUP handler and, with `[server] watch`, the watcher.
pub fn triggers(runtime: &Runtime) -> Triggers {
    use tokio::signal::unix::{signal, SignalKind};
    let hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(actor = names::ROOT, error = %e, "cannot handle SIGHUP; use `warden reload`");
            None
        }
    };
    let (watcher, changes) = match runtime.config.server.watch {
        true => match watch(runtime) {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::error!(actor = names::ROOT, error = %e, "cannot watch the configuration files; reload with `warden reload` or SIGHUP");
                (None, None)
            }
        },
        false => (None, None),
    };
    Triggers {
        hup,
        watcher,
        changes,
    }
}

/// Serves reload requests until warden drains.
pub async fn run(runtime: Arc<Runtime>, triggers: Triggers) {
    let Some(mut queue) = runtime.take_reload_queue() else {
        return;
    };
    let Triggers {
        mut hup,
        watcher: _watcher,
        mut changes,
    } = triggers;
    loop {
        let request = tokio::select! {
            _ = runtime.draining.cancelled() => return,
            r = queue.recv() => match r {
                Some(r) => r,
                None => return,
            },
            Some(()) = recv_hup(&mut hup) => reload::Request { trigger: Trigger::Sighup, reply: None },
            Some(()) = debounced(&mut changes) => reload::Request { trigger: Trigger::Watch, reply: None },
        };
        let started = Instant::now();
        let outcome = apply(&runtime).await;
        log(request.trigger, &outcome, started.elapsed());
        runtime.record_reload(request.trigger, &outcome);
        if let Some(reply) = request.reply {
            let _ = reply.send(outcome);
        }
    }
}

async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The next watched change, once the files have been quiet for `DEBOUNCE`.
async fn debounced(changes: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    rx.recv().await?;
    let until = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(until);
        match tokio::time::timeout_at(quiet, rx.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return None,
            Err(_) => return Some(()),
        }
    }
}

fn log(trigger: Trigger, outcome: &Outcome, took: Duration) {
    let took_ms = took.as_millis() as u64;
    match outcome {
        Outcome::Applied(d) if d.is_empty() => {
            tracing::info!(actor = names::ROOT, trigger = trigger.name(), took_ms, restart_needed = ?d.restart_needed, "reload: nothing changed")
        }
        Outcome::Applied(d) => tracing::info!(
            actor = names::ROOT,
            trigger = trigger.name(),
            generation = d.generation,
            added = ?d.added,
            changed = ?d.changed,
            removed = ?d.removed,
            unchanged = d.unchanged,
            restart_needed = ?d.restart_needed,
            took_ms,
            "reload applied"
        ),
        Outcome::Refused { problems } => {
            for p in problems {
                tracing::error!(actor = names::ROOT, trigger = trigger.name(), problem = %p, "reload refused");
            }
            tracing::error!(
                actor = names::ROOT,
                trigger = trigger.name(),
                problems = problems.len(),
                "reload refused: the running configuration keeps serving"
            );
        }
    }
}

/// One reload, start to end.
async fn apply(runtime: &Arc<Runtime>) -> Outcome {
    let rt = runtime.clone();
    // Reading files blocks: not on the runtime's threads.
    let loaded = match tokio::task::spawn_blocking(move || rt.load_again()).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(problems)) => {
            return Outcome::Refused {
                problems: problems.iter().map(ToString::to_string).collect(),
            }
        }
        Err(e) => {
            return Outcome::Refused {
                problems: vec![format!("reading the configuration failed: {e}")],
            }
        }
    };
    let current = runtime.tools();
    let taken = |name: &str| ractor::registry::where_is(name).is_some();
    let mut plan = match reload::plan(&current, loaded.tools, &taken) {
        Ok(plan) => plan,
        Err(e) => {
            let file = loaded_file(&current, &e.tool);
            return Outcome::Refused {
                problems: vec![format!("{file}: input: {e}")],
            };
        }
    };
    plan.diff.restart_needed = reload::restart_needed(&runtime.config, &loaded.config);
    let Some(tools) = ractor::registry::where_is(names::TOOLS) else {
        return Outcome::Refused {
            problems: vec!["the tools supervisor is restarting; try again".into()],
        };
    };
    let tools: ActorRef<ToolsSupervisorMsg> = tools.into();
    let policy = loaded.config.supervisor.clone();
    let start = plan.start.clone();
    let spawned = tools
        .call(
            move |reply| ToolsSupervisorMsg::Start(start, policy, reply),
            Some(SPAWN_DEADLINE),
        )
        .await;
    if !matches!(spawned, Ok(ractor::rpc::CallResult::Success(()))) {
        // The message is in its mailbox: the actors start when it gets there.
        tracing::warn!(
            actor = names::ROOT,
            "the tools supervisor was slow to start the new actors; applying anyway"
        );
    }
    if plan.diff.is_empty() {
        return Outcome::Applied(plan.diff);
    }
    started(&plan.start).await;
    let (tools_changed, servers_changed) = reload::lists_changed(&plan);
    let generation = plan.diff.generation;
    for old in &plan.retire {
        let how = match plan.registry.get(&old.spec.name) {
            Some(_) => "replaced",
            None => "removed",
        };
        old.retire(format!(
            "{how} by the reload to configuration generation {generation}; finishing its calls in flight"
        ));
    }
    runtime.install(plan.registry, &plan.retire);
    let _ = tools.cast(ToolsSupervisorMsg::Retire(plan.retire));
    if tools_changed {
        runtime.notify(Notice::ToolsChanged);
    }
    if servers_changed {
        runtime.notify(Notice::PromptsChanged);
        runtime.notify(Notice::ResourcesChanged);
    }
    Outcome::Applied(plan.diff)
}

/// Waits (up to `START_WAIT`) until no new entry is still starting.
async fn started(entries: &[Arc<ToolEntry>]) {
    let until = Instant::now() + START_WAIT;
    while Instant::now() < until
        && entries
            .iter()
            .any(|e| matches!(e.state(), ToolState::Starting))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The actor file of tool `name`, for a problem's location.
fn loaded_file(current: &crate::core::registry::Registry, name: &str) -> String {
    current
        .get(name)
        .map_or_else(|| name.to_string(), |e| e.spec.file.display().to_string())
}

/// Watches config.toml's directory and the actors directory; each change to
/// a `.toml` file there sends one event (the debouncer gathers them).
fn watch(
    runtime: &Runtime,
) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), notify::Error> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, rx) = mpsc::channel(16);
    let config = runtime.config_path.clone();
    let config_dir = parent_dir(&config);
    let actors = runtime.config.server.actors_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = event
            .paths
            .iter()
            .any(|p| p == &config || p.extension().is_some_and(|x| x == "toml"));
        if relevant {
            // Full: a reload is coming anyway.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&config_dir, RecursiveMode::NonRecursive)?;
    if actors != config_dir {
        watcher.watch(&actors, RecursiveMode::NonRecursive)?;
    }
    tracing::info!(actor = names::ROOT, config = %config_dir.display(), actors = %actors.display(), "watching the configuration files");
    Ok((watcher, rx))
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
