//! A command tool's call: its arguments become an argv, its program runs
//! (`exec`), and how the run ended becomes the tool's answer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{CommandSpec, ToolSpec};
use crate::core::call::{Progress, ProgressFn, ToolOutput, ToolResult};
use crate::core::error::{ErrorKind, ToolError};
use crate::exec::argv::{self, ArgvError};
use crate::exec::paths::{self, PathError};
use crate::exec::run::{self, Captured, Ending, Program, RunError};
use crate::exec::{program_name, Exit, Groups};

/// Bytes of stderr quoted in an `execution_failed` answer.
pub const STDERR_TAIL: usize = 2048;

/// The argv of a call, or why its arguments cannot be one: paths confined
/// to `cwd`, the template rendered. Pure, for the property tests and fuzzing.
pub fn prepare(cmd: &CommandSpec, args: &Map<String, Value>) -> Result<Vec<String>, ToolError> {
    paths::confine(&cmd.cwd, &cmd.paths, args).map_err(path_error)?;
    let argv = argv::render(&cmd.args, args).map_err(argv_error)?;
    argv::fits(&cmd.program, &argv, &cmd.env).map_err(argv_error)?;
    Ok(argv)
}

/// Runs one call of a command tool to its answer.
pub async fn call(
    spec: &ToolSpec,
    cmd: &CommandSpec,
    program: &Path,
    groups: &Arc<Groups>,
    args: &Map<String, Value>,
    cancel: &CancellationToken,
    progress: Option<&ProgressFn>,
) -> ToolResult {
    let argv = prepare(cmd, args)?;
    let report = progress.map(|sink| {
        move |bytes: u64| {
            sink(Progress {
                progress: bytes as f64,
                total: None,
                message: Some(format!("{bytes} bytes of output")),
            })
        }
    });
    let started = Instant::now();
    let ending = run::run(
        groups,
        Program {
            owner: &spec.name,
            path: program,
            argv,
            env: &cmd.env,
            cwd: &cmd.cwd,
            limits: &cmd.limits,
            timeout: spec.timeout,
            max_output: spec.max_output,
        },
        cancel,
        report.as_ref().map(|r| r as &(dyn Fn(u64) + Send + Sync)),
    )
    .await
    .map_err(|e| run_error(&cmd.program, e))?;
    let name = program_name(&cmd.program);
    match ending {
        Ending::Exited {
            killed_because: Some(reason),
            ..
        } => Err(ToolError::new(
            ErrorKind::ExecutionFailed,
            format!("`{name}` was restarted by warden: {reason}."),
            "Retry; if it keeps happening, ask for less at once or ask the operator to raise the tool's memory budget.",
        )
        .detail("restarted_by", "recovery")
        .detail("duration_ms", started.elapsed().as_millis() as u64)),
        Ending::Exited {
            status,
            stdout,
            stderr,
            killed_because: None,
        } => finish(
            name,
            status,
            stdout,
            stderr,
            started.elapsed(),
            &cmd.env,
        ),
        Ending::TimedOut => Err(ToolError::new(
            ErrorKind::Timeout,
            format!(
                "`{name}` did not finish within {}; its process group was killed.",
                humantime::format_duration(spec.timeout)
            ),
            "Retry with a narrower request, or ask the operator to raise this tool's timeout.",
        )
        .detail("timeout_ms", spec.timeout.as_millis() as u64)),
        Ending::Cancelled => Err(ToolError::cancelled(
            "The call was cancelled; its process group was killed.",
        )),
    }
}

/// A program that ran to its end: its output, or why it failed.
fn finish(
    name: &str,
    status: std::process::ExitStatus,
    out: Captured,
    err: Captured,
    elapsed: Duration,
    env: &[(String, String)],
) -> ToolResult {
    let stdout = String::from_utf8_lossy(&out.bytes).into_owned();
    if status.success() {
        let mut output = ToolOutput::text(stdout);
        if out.truncated() {
            output.notes.push(format!(
                "[warden: output truncated: kept the first {} of {} bytes]",
                out.bytes.len(),
                out.total
            ));
        }
        return Ok(output);
    }
    let tail_start = err.bytes.len().saturating_sub(STDERR_TAIL);
    // The tail reaches the client, the call log and `last_error`: a secret
    // env value the program printed is blanked first (worked out here, on
    // failure only, not on every call).
    let stderr_tail = crate::core::text::blank(
        String::from_utf8_lossy(&err.bytes[tail_start..]).trim_end(),
        &crate::config::secret_values(env),
    )
    .into_owned();
    let exit = Exit::from(status);
    let message = if stderr_tail.is_empty() {
        format!("`{name}` {exit}.")
    } else {
        format!("`{name}` {exit}: {stderr_tail}")
    };
    let mut e = ToolError::new(
        ErrorKind::ExecutionFailed,
        message,
        "Check the arguments against the tool's description; the stderr tail says what the program objected to.",
    );
    match exit {
        Exit::Code(code) => e = e.detail("exit_code", code),
        Exit::Signal(sig) => e = e.detail("signal", sig),
        Exit::Other => {}
    }
    Err(e
        .detail("stderr_tail", stderr_tail)
        .detail("stdout", stdout)
        .detail("duration_ms", elapsed.as_millis() as u64))
}

fn run_error(program: &str, e: RunError) -> ToolError {
    match &e {
        RunError::Spawn(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            ToolError::unavailable(program, &e.to_string(), None)
        }
        RunError::Spawn(io) => ToolError::internal(format!("starting `{program}` failed: {io}")),
        RunError::Wait(_) => ToolError::internal(e.to_string()),
    }
}

fn argv_error(e: ArgvError) -> ToolError {
    let message = e.to_string();
    match e {
        ArgvError::NotScalar { field } => ToolError::new(
            ErrorKind::Validation,
            message,
            "Pass a single value for this argument.",
        )
        .detail("field", field),
        ArgvError::LeadingDash { field } => ToolError::new(
            ErrorKind::Validation,
            message,
            "Pass a value that does not start with `-` (for a file, prefix it with `./`).",
        )
        .detail("field", field)
        .detail("rule", "leading_dash"),
        ArgvError::Nul => ToolError::new(
            ErrorKind::Validation,
            message,
            "Remove the NUL byte from the argument.",
        ),
        ArgvError::TooLong { fields, .. } => {
            ToolError::new(ErrorKind::Validation, message, "Send a shorter value.")
                .detail("field", fields)
                .detail("rule", "max_arg_len")
        }
        ArgvError::Inexact { field, .. } => ToolError::new(
            ErrorKind::Validation,
            message,
            "Pass the number as a string if the program takes it as text, or a smaller one.",
        )
        .detail("field", field)
        .detail("rule", "exact_number"),
        ArgvError::TooBig { .. } => ToolError::new(
            ErrorKind::Validation,
            message,
            "Send less at once: fewer or shorter values.",
        )
        .detail("rule", "arg_max"),
    }
}

fn path_error(e: PathError) -> ToolError {
    let message = e.to_string();
    match e {
        PathError::Outside { field, .. } => ToolError::new(
            ErrorKind::Validation,
            message,
            "Pass a path inside the tool's directory, without `..` or symlinks out of it.",
        )
        .detail("field", field)
        .detail("rule", "outside_cwd"),
        PathError::Cwd { .. } => ToolError::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn argument_problems_are_validation_errors_naming_field_and_rule() {
        let cmd = CommandSpec {
            program: "true".into(),
            args: vec![crate::config::ArgTemplate::parse("{a}").unwrap()],
            cwd: "/".into(),
            env: vec![],
            limits: Default::default(),
            paths: vec![],
        };
        let args = |v: Value| v.as_object().unwrap().clone();
        let e = prepare(&cmd, &args(json!({"a": "-rf"}))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation);
        assert_eq!(e.details["rule"], "leading_dash");
        assert_eq!(e.details["field"], "a");
        assert_eq!(prepare(&cmd, &args(json!({"a": "x"}))).unwrap(), ["x"]);
    }
}
