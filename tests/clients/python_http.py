#!/usr/bin/env python3
"""Two MCP sessions at once against `warden serve --http`, with the official
Python SDK (PyPI `mcp`) over Streamable HTTP.

Usage: python_http.py URL PIDFILE

warden serves the tools `echo` (builtin), `sleeper` (a command tool:
`warden-fixture sleep {ms} {pidfile}`) and the fixture MCP server's `fx_*`.
Session A starts a minute-long `sleeper` call and cancels it: its process
must be gone within 2 s. Session B meanwhile calls `echo` 20 times, each
answered with its own text. Then B changes the fixture's tool list, and
both sessions must hear `tools/list_changed`; A's progress notifications
must never reach B. Last, the SDK's 2026-07-28 `Client` answers the
conformance fixture's (`cf_*`) elicitation through its input_required
driver. Exits 1 saying what failed; run by tests/it/mcp_http.rs.
"""

import os
import sys
import time

import anyio
import mcp_types as types
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

REQUEST_TIMEOUT = 20.0
SESSION_TIMEOUT = 60.0


class Failure(Exception):
    """A check that did not hold."""


def check(cond, what):
    if not cond:
        raise Failure(what)


def text_of(result):
    check(result.content, f"a result without content: {result}")
    return getattr(result.content[0], "text", "")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False


class Heard:
    """What a session hears unasked, by method."""

    def __init__(self):
        self.methods = []
        self.list_changed = anyio.Event()

    async def __call__(self, message):
        method = getattr(getattr(message, "root", message), "method", None)
        if method is None:
            return
        self.methods.append(method)
        if method == "notifications/tools/list_changed":
            self.list_changed.set()


async def session_a(session, pidfile, cancelled_pid, out):
    # A call that would run a minute, cancelled once its program runs.
    with anyio.CancelScope() as scope:
        async def cancel_when_running():
            for _ in range(500):
                if os.path.exists(pidfile) and open(pidfile).read().strip():
                    break
                await anyio.sleep(0.01)
            cancelled_pid.append(int(open(pidfile).read().strip()))
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_running)
            await session.call_tool("sleeper", {"ms": 60000, "pidfile": pidfile},
                                    read_timeout_seconds=REQUEST_TIMEOUT)
            raise Failure("the minute-long sleeper call was answered before its cancel")
    t0 = time.monotonic()
    while alive(cancelled_pid[0]) and time.monotonic() - t0 < 2.0:
        await anyio.sleep(0.02)
    check(not alive(cancelled_pid[0]), f"the cancelled call's process {cancelled_pid[0]} outlived it by 2 s")
    out.append(f"A: cancelled sleeper, its process gone in {time.monotonic() - t0:.2f}s")
    # Progress of A's own call reaches A.
    steps = []

    async def progress(p, total, message):
        steps.append(p)

    r = await session.call_tool("fx_progress", {"steps": 3, "ms": 10}, progress_callback=progress,
                                read_timeout_seconds=REQUEST_TIMEOUT)
    check(text_of(r) == "done 3", f"fx_progress answered {text_of(r)!r}")
    check(len(steps) == 3, f"A heard {len(steps)} progress reports of its 3")
    out.append("A: progress 3 of 3")


async def session_b(session, out):
    for i in range(20):
        r = await session.call_tool("echo", {"message": f"b{i}"}, read_timeout_seconds=REQUEST_TIMEOUT)
        check(not r.is_error and text_of(r) == f"b{i}", f"echo b{i} answered {r}")
    out.append("B: 20 echo calls answered while A's call ran and was cancelled")


async def main(url, pidfile):
    out = []
    heard_a, heard_b = Heard(), Heard()
    with anyio.fail_after(SESSION_TIMEOUT):
        async with streamable_http_client(url) as (ra, wa), streamable_http_client(url) as (rb, wb):
            async with ClientSession(ra, wa, message_handler=heard_a) as a, \
                    ClientSession(rb, wb, message_handler=heard_b) as b:
                ia, ib = await a.initialize(), await b.initialize()
                out.append(f"two sessions ({ia.protocol_version}, {ib.protocol_version})")
                cancelled = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(session_a, a, pidfile, cancelled, out)
                    tg.start_soon(session_b, b, out)
                r = await b.call_tool("fx_change_tools", {}, read_timeout_seconds=REQUEST_TIMEOUT)
                check(text_of(r) == "tools changed", f"fx_change_tools answered {r}")
                with anyio.fail_after(5):
                    await heard_a.list_changed.wait()
                    await heard_b.list_changed.wait()
                out.append("tools/list_changed reached both sessions")
                check("notifications/progress" not in heard_b.methods,
                      f"B heard A's progress: {heard_b.methods}")
                out.append("B heard none of A's progress")
        # The SDK's high-level Client negotiates the newest protocol both speak.
        async with Client(url, read_timeout_seconds=REQUEST_TIMEOUT) as client:
            check(client.protocol_version == "2026-07-28",
                  f"Client(url) negotiated {client.protocol_version}, not 2026-07-28")
            r = await client.call_tool("echo", {"message": "auto"})
            check(not r.is_error and text_of(r) == "auto", f"echo through Client: {r}")
            r = await client.call_tool("fx_echo", {"message": "through the gateway"})
            check(not r.is_error and text_of(r) == "through the gateway", f"fx_echo through Client: {r}")
            out.append(f"Client(url): {client.protocol_version}, stateless echo and fx_echo")
        # A 2026-07-28 client takes no requests: the conformance fixture's
        # elicitation reaches it as an input_required result, which the SDK
        # answers through its callback and retries with.
        asked = []

        async def elicit(context, params):
            asked.append(params.message)
            return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

        async with Client(url, read_timeout_seconds=REQUEST_TIMEOUT, elicitation_callback=elicit) as client:
            check(client.protocol_version == "2026-07-28", f"negotiated {client.protocol_version}")
            r = await client.call_tool("cf_test_elicitation", {"message": "Who are you?"})
            check(asked == ["Who are you?"], f"the elicitation reached the callback as {asked}")
            said = text_of(r)
            check(not r.is_error and said.startswith("User response: <action: accept")
                  and '"username":"ada"' in said, f"cf_test_elicitation answered {r}")
            out.append("Client(url): a legacy server's elicitation answered through input_required and a retry")
    return out


def leaves(e):
    if isinstance(e, BaseExceptionGroup):
        return [leaf for inner in e.exceptions for leaf in leaves(inner)]
    return [e]


def describe(e):
    if isinstance(e, Failure):
        return str(e)
    if isinstance(e, TimeoutError):
        return f"the sessions took longer than {SESSION_TIMEOUT:.0f}s"
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python_http.py URL PIDFILE")
    try:
        lines = anyio.run(main, sys.argv[1], sys.argv[2])
    except Exception as e:
        sys.exit("\n".join(f"python_http: FAILED: {describe(leaf)}" for leaf in leaves(e)))
    for line in lines:
        print(f"python_http: {line}", file=sys.stderr)
    print("python_http: ok", file=sys.stderr)
