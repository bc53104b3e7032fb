//! The operator's commands against a running instance: `warden status`,
//! `warden kill`, `warden metrics`, `warden breaker`. Each finds the instance
//! through its control socket and speaks the control protocol.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::core::status::Status;
use crate::core::text::printable;
use crate::ops::control::{self, Client, Instance};

/// Exit code when no running instance is found (like `systemctl status` of a stopped unit).
pub const EXIT_NOT_RUNNING: i32 = 3;
/// How often `status --watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Which instance a command talks to.
pub struct Target {
    /// The directories of control sockets, looked in together.
    pub dirs: Vec<PathBuf>,
    /// The instance's pid, needed when several run.
    pub pid: Option<u32>,
}

/// A command's failure: the exit code and what to tell the operator.
pub struct Failure(pub i32, pub String);

impl Target {
    async fn instance(&self) -> Result<Instance, Failure> {
        let mut found = Vec::new();
        let mut refused = Vec::new();
        for dir in &self.dirs {
            match control::discover(dir).await {
                Ok(mut here) => found.append(&mut here),
                Err(e) => refused.push(e.to_string()),
            }
        }
        let looked = self
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        // A directory refused as untrusted is said, with where else was looked.
        let refusals = if refused.is_empty() {
            String::new()
        } else {
            format!("; refused: {}", refused.join("; "))
        };
        match (self.pid, found.as_slice()) {
            (_, []) if !refused.is_empty() && self.dirs.len() == 1 => Err(Failure(
                1,
                format!("refusing the control directory: {}", refused.join("; ")),
            )),
            (_, []) => Err(Failure(
                EXIT_NOT_RUNNING,
                format!("no running warden found (no live socket in {looked}{refusals})"),
            )),
            (Some(pid), all) => all.iter().find(|i| i.pid == pid).cloned().ok_or_else(|| {
                Failure(
                    EXIT_NOT_RUNNING,
                    format!("no running warden with pid {pid} in {looked}{refusals}"),
                )
            }),
            (None, [one]) => Ok(one.clone()),
            (None, several) => {
                let mut msg = format!(
                    "{} warden instances are running; pick one with --pid:\n",
                    several.len()
                );
                for i in several {
                    msg.push_str(&format!("  pid {}  {}\n", i.pid, i.socket.display()));
                }
                Err(Failure(2, msg.trim_end().to_string()))
            }
        }
    }

    /// The instance's status.
    pub async fn status(&self) -> Result<Status, Failure> {
        let mut answer = self.request(json!({"cmd": "status"})).await?;
        serde_json::from_value(answer["status"].take()).map_err(|e| {
            Failure(
                1,
                format!("warden answered a status this command cannot read: {e}"),
            )
        })
    }

    async fn request(&self, request: Value) -> Result<Value, Failure> {
        let instance = self.instance().await?;
        let mut client = Client::connect(&instance.socket).await.map_err(|e| {
            Failure(
                1,
                format!("cannot connect to {}: {e}", instance.socket.display()),
            )
        })?;
        client
            .request(&request)
            .await
            .map_err(|e| Failure(1, e.to_string()))
    }
}

/// Runs a command; prints its failure to stderr and returns the exit code.
pub async fn run(f: impl std::future::Future<Output = Result<(), Failure>>) -> i32 {
    match f.await {
        Ok(()) => 0,
        Err(Failure(code, msg)) => {
            eprintln!("warden: {msg}");
            code
        }
    }
}

pub async fn status(target: &Target, as_json: bool, watch: bool) -> Result<(), Failure> {
    let terminal = std::io::stdout().is_terminal();
    let color = terminal && std::env::var_os("NO_COLOR").is_none();
    let mut frames = 0u64;
    loop {
        let status = target.status().await?;
        let text = if as_json {
            serde_json::to_string_pretty(&status).unwrap_or_default()
        } else {
            render(&status, color)
        };
        let mut out = std::io::stdout().lock();
        if watch && terminal {
            // Home the cursor and clear, so the table redraws in place.
            let _ = write!(out, "\x1b[H\x1b[2J");
        } else if frames > 0 && !as_json {
            // Into a pipe or a file: plain frames, a blank line between.
            let _ = writeln!(out);
        }
        frames += 1;
        if writeln!(out, "{text}").is_err() {
            return Ok(());
        }
        let _ = out.flush();
        if !watch {
            return Ok(());
        }
        drop(out);
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

pub async fn kill(target: &Target, actor: &str, signal: Option<&str>) -> Result<(), Failure> {
    let answer = target
        .request(json!({"cmd": "kill", "actor": actor, "signal": signal}))
        .await?;
    match answer.get("signalled") {
        Some(n) => println!(
            "sent SIG{} to {n} process group(s) of {actor}",
            answer["signal"]
                .as_str()
                .unwrap_or("?")
                .trim_start_matches("SIG")
        ),
        None => println!("killed {actor}; its supervisor restarts it"),
    }
    Ok(())
}

pub async fn metrics(target: &Target) -> Result<(), Failure> {
    let answer = target.request(json!({"cmd": "metrics"})).await?;
    print!("{}", answer["metrics"].as_str().unwrap_or_default());
    Ok(())
}

/// `warden reload`: exit 0 once the new set is applied, 1 when refused.
pub async fn reload(target: &Target) -> Result<(), Failure> {
    let mut answer = target.request(json!({"cmd": "reload"})).await?;
    let outcome: crate::core::reload::Outcome = serde_json::from_value(answer["reload"].take())
        .map_err(|e| {
            Failure(
                1,
                format!("warden answered a reload this command cannot read: {e}"),
            )
        })?;
    match outcome {
        crate::core::reload::Outcome::Applied(d) => {
            if d.is_empty() {
                println!("reload: nothing changed ({} tools)", d.unchanged);
            } else {
                println!(
                    "reload: generation {} applied: {} added, {} changed, {} removed, {} unchanged",
                    d.generation,
                    d.added.len(),
                    d.changed.len(),
                    d.removed.len(),
                    d.unchanged
                );
                for (what, names) in [
                    ("added", &d.added),
                    ("changed", &d.changed),
                    ("removed", &d.removed),
                ] {
                    if !names.is_empty() {
                        println!("  {what}: {}", printable(&names.join(", ")));
                    }
                }
            }
            for s in &d.restart_needed {
                println!("  config.toml {s} changed: it takes effect when warden restarts");
            }
            Ok(())
        }
        crate::core::reload::Outcome::Refused { problems } => {
            for p in &problems {
                println!("{}", printable(p));
            }
            Err(Failure(
                1,
                format!(
                    "reload refused: {} problem(s); the running configuration keeps serving",
                    problems.len()
                ),
            ))
        }
    }
}

pub async fn breaker(target: &Target, tool: &str, action: &str) -> Result<(), Failure> {
    let answer = target
        .request(json!({"cmd": "breaker", "tool": tool, "action": action}))
        .await?;
    println!(
        "{tool}: breaker {}",
        answer["breaker"]["state"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `status` as a person reads it: a header, then one line per actor.
pub fn render(status: &Status, color: bool) -> String {
    let w = &status.warden;
    let paint = |s: &str, code: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let state_color = |s: &str| match s {
        "running" | "closed" | "healthy" => "32",
        "starting" | "restarting" | "half_open" | "draining" | "degraded" | "forced_closed" => "33",
        _ => "31",
    };
    let health = crate::core::status::health(status).0.name();
    let mut out = format!(
        "warden {}  pid {}  up {}  config {}\nstate {}  health {}  memory {}  in flight {}/{}  threads {}\n",
        printable(&w.version),
        w.pid,
        duration(w.uptime_s),
        printable(&w.config),
        paint(&printable(&w.state), state_color(&w.state)),
        paint(health, state_color(health)),
        w.rss_bytes.map_or("?".to_string(), mib),
        w.in_flight,
        w.max_in_flight,
        w.threads,
    );
    let r = &w.reload;
    if r.generation > 0 || r.refused.is_some() || !r.restart_needed.is_empty() {
        out.push_str(&format!(
            "config generation {}, loaded {} ago",
            r.generation,
            duration(r.loaded_s)
        ));
        if !r.restart_needed.is_empty() {
            out.push_str(&format!(
                "; changed, waiting for a restart: {}",
                printable(&r.restart_needed.join(" "))
            ));
        }
        out.push('\n');
        if let Some(refused) = &r.refused {
            out.push_str(&format!(
                "{} {} ago ({}):\n",
                paint("last reload refused", "31"),
                duration(refused.ago_s),
                printable(&refused.trigger)
            ));
            for p in &refused.problems {
                out.push_str(&format!("  {}\n", printable(p)));
            }
        }
    }
    let h = &status.health;
    if let Some(m) = &h.memory {
        let level = h.recovery.level.name();
        let level_color = match level {
            "normal" => "32",
            "trim" => "33",
            _ => "31",
        };
        out.push_str(&format!(
            "tree {} of {} ({:.0} %, {})  level {}  lag p50 {:.0}ms p99 {:.0}ms max {:.0}ms\n",
            mib(m.total_bytes),
            mib(m.limit_bytes),
            m.fraction * 100.0,
            m.limit_source,
            paint(level, level_color),
            h.lag.p50_ms,
            h.lag.p99_ms,
            h.lag.max_ms,
        ));
        if let Some(a) = h.recovery.actions.last() {
            out.push_str(&format!(
                "last recovery action: {} {}: {}\n",
                printable(&a.action),
                printable(&a.target),
                printable(&a.reason)
            ));
        }
    }
    let s = &w.sessions;
    if s.open > 0 {
        out.push_str(&format!(
            "sessions {} open ({}){}\n",
            s.open,
            s.by_protocol
                .iter()
                .map(|(k, n)| format!("{}: {n}", printable(k)))
                .collect::<Vec<_>>()
                .join(", "),
            s.oldest_idle_s
                .map(|i| format!(", oldest idle {}", duration(i)))
                .unwrap_or_default()
        ));
        if !s.by_principal.is_empty() {
            out.push_str(&format!(
                "principals {}\n",
                s.by_principal
                    .iter()
                    .map(|(k, n)| format!("{}: {n}", printable(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let c = &w.containment;
    if !c.kind.is_empty() && !c.complete {
        // Said only when it is weaker than a cgroup: then it matters.
        out.push_str(&format!(
            "containment {}: what leaves its process group is swept up, and can outlive a SIGKILL of warden{}\n",
            paint(&printable(&c.kind), "33"),
            c.why_not
                .as_deref()
                .map(|w| format!(" (no cgroup: {})", printable(w)))
                .unwrap_or_default()
        ));
    }
    out.push('\n');
    let header = [
        "ACTOR",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "QUEUE",
        "IN FLIGHT",
        "BREAKER",
        "PROCESSES",
        "LAST ERROR",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for a in &status.actors {
        rows.push([
            printable(&a.name).into_owned(),
            printable(&a.state).into_owned(),
            String::new(),
            a.restarts.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for t in a.children.iter().flatten() {
            let breaker = match t.breaker.half_open_in_ms {
                Some(ms) => format!("open ({} to half-open)", duration_ms(ms)),
                None => printable(&t.breaker.state).into_owned(),
            };
            let processes: Vec<String> = t
                .processes
                .iter()
                .map(|p| format!("{} ({})", p.pid, p.rss_bytes.map_or("?".into(), mib)))
                .collect();
            // A caller's argument can end up here: escaped, so that it
            // cannot retitle or clear the operator's terminal.
            let mut last_error =
                printable(&t.last_error.as_deref().unwrap_or("").replace('\n', " ")).into_owned();
            if last_error.chars().count() > 60 {
                last_error = last_error.chars().take(59).collect::<String>() + "…";
            }
            rows.push([
                format!("  {}", printable(&t.name)),
                printable(&t.state).into_owned(),
                duration(t.uptime_s),
                t.restarts.to_string(),
                format!("{}/{}", t.queue_depth, t.queue_capacity),
                t.in_flight.to_string(),
                breaker,
                if processes.is_empty() {
                    "-".into()
                } else {
                    processes.join(", ")
                },
                if last_error.is_empty() {
                    "-".into()
                } else {
                    last_error
                },
            ]);
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>, raw: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(raw[i].chars().count());
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_string()
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    out.push_str(&line(head.clone(), &head));
    out.push('\n');
    for r in &rows {
        let mut cells = r.to_vec();
        cells[1] = paint(&r[1], state_color(&r[1]));
        if !r[6].is_empty() {
            let s = r[6].split(' ').next().unwrap_or("");
            cells[6] = paint(&r[6], state_color(s));
        }
        out.push_str(&line(cells, r));
        out.push('\n');
    }
    out.trim_end().to_string()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        duration(ms.div_ceil(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_systemctl() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m05s");
        assert_eq!(duration(7260), "2h01m");
        assert_eq!(duration(90000), "1d01h");
        assert_eq!(duration_ms(250), "250ms");
        assert_eq!(duration_ms(1500), "2s");
    }

    #[test]
    fn render_shows_one_line_per_actor_without_colour_off_a_terminal() {
        use crate::core::health::Action;
        use crate::core::levels::Level;
        use crate::core::status::{MemoryLine, ProcessLine};
        let mut status =
            crate::core::status::tests::status("running", true, &[("df", "running", "open")]);
        status.health.memory = Some(MemoryLine {
            warden_rss_bytes: 11534336,
            heap_in_use_bytes: Some(4194304),
            total_bytes: 20971520,
            limit_bytes: 209715200,
            limit_source: "config".into(),
            fraction: 0.1,
            children: vec![],
        });
        status.health.lag.p99_ms = 2.2;
        status.health.lag.max_ms = 310.0;
        status.health.recovery.level = Level::Trim;
        status.health.recovery.actions.push(Action {
            at_unix_ms: 0,
            action: "trim".into(),
            target: "warden".into(),
            reason: "memory level normal -> trim".into(),
            before_bytes: 0,
            before_fraction: 0.0,
            after_bytes: None,
            after_fraction: None,
        });
        let tools = status
            .actors
            .iter_mut()
            .find(|a| a.name == "tools")
            .unwrap();
        tools.restarts = 1;
        let df = &mut tools.children.as_mut().unwrap()[0];
        df.uptime_s = 61;
        df.restarts = 2;
        df.queue_depth = 1;
        df.queue_capacity = 8;
        df.in_flight = 3;
        df.breaker.half_open_in_ms = Some(12000);
        df.processes = vec![ProcessLine {
            pid: 99,
            rss_bytes: Some(1048576),
        }];
        df.last_error = Some("`df` exited with status 1".into());
        let text = render(&status, false);
        assert!(!text.contains('\x1b'));
        assert!(
            text.starts_with("warden 0.1.0  pid 42  up 1m01s  config /etc/warden/config.toml"),
            "{text}"
        );
        assert!(
            text.contains("memory 11.0 MiB  in flight 1/256  threads 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tree 20.0 MiB of 200.0 MiB (10 %, config)  level trim  lag p50 0ms p99 2ms max 310ms\n"),
            "{text}"
        );
        assert!(
            text.contains("last recovery action: trim warden: memory level normal -> trim\n"),
            "{text}"
        );
        assert!(
            text.contains("\nsessions 1 open (stdio 2025-11-25: 1), oldest idle 3s\n\n"),
            "{text}"
        );
        let df = text.lines().find(|l| l.contains("tool:df")).unwrap();
        for want in [
            "running",
            "1m01s",
            "1/8",
            "open (12s to half-open)",
            "99 (1.0 MiB)",
            "`df` exited",
        ] {
            assert!(df.contains(want), "{want} missing from {df:?}");
        }
        assert!(render(&status, true).contains("\x1b[31mopen (12s to half-open)\x1b[0m"));

        // A caller's text in last_error reaches the terminal escaped.
        let tools = status
            .actors
            .iter_mut()
            .find(|a| a.name == "tools")
            .unwrap();
        tools.children.as_mut().unwrap()[0].last_error =
            Some("x\u{1b}]0;pwned\u{7}\u{9b}2J\u{202e}".into());
        let text = render(&status, false);
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && crate::core::text::is_unsafe(c)),
            "{text:?}"
        );
        assert!(
            text.contains("x\\u001b]0;pwned\\u0007\\u009b2J\\u202e"),
            "{text}"
        );
    }
}
