#!/usr/bin/env python3
"""One MCP session against warden with the official Python SDK (PyPI `mcp`).

Usage: python_client.py WARDEN serve --config CONFIG

Launches the command given as arguments over stdio the way an MCP host does,
initializes, lists the tools, calls every tool of the default config and
checks that a bad call reaches the client as an error; then a second, short
session through the SDK's high-level Client, which negotiates differently.
Exits 1 saying what failed; prints a short summary to stderr. Run by
tests/it/clients.rs.
"""

import json
import os
import sys

import anyio
from mcp import Client, ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client

# The tools of config.toml + actors/ in this repository.
DEFAULT_TOOLS = {"disk_usage", "dns_lookup", "echo", "list_dir", "status"}
# Per request; the whole session has its own deadline in main().
REQUEST_TIMEOUT = 20.0
SESSION_TIMEOUT = 60.0


class Failure(Exception):
    """A check that did not hold."""


def check(cond, what):
    if not cond:
        raise Failure(what)


def text_of(result):
    """The text of a tool result's first content block."""
    check(result.content, f"a result without content: {result}")
    return getattr(result.content[0], "text", "")


async def call_ok(session, name, arguments):
    """Calls a tool that must succeed; returns its text."""
    result = await session.call_tool(name, arguments, read_timeout_seconds=REQUEST_TIMEOUT)
    check(not result.is_error, f"{name} {arguments} answered an error: {text_of(result)}")
    return text_of(result)


def server_params(argv):
    # stdio_client passes only a few safe variables (HOME, PATH, ...) to the
    # server; the test's WARDEN_* overrides (log and control dirs) must reach it.
    env = {k: v for k, v in os.environ.items() if k.startswith("WARDEN_")}
    return StdioServerParameters(command=argv[0], args=argv[1:], env=env)


async def session_checks(argv):
    params = server_params(argv)
    summary = []
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT) as session:
            init = await session.initialize()
            await session.send_ping()
            summary.append(f"initialized ({init.protocol_version}, server {init.server_info.name}), ping")

            listed = await session.list_tools()
            names = {t.name for t in listed.tools}
            check(DEFAULT_TOOLS <= names, f"tools/list lacks {sorted(DEFAULT_TOOLS - names)}: {sorted(names)}")
            summary.append(f"tools/list: {', '.join(sorted(names))}")

            message = "hello from the python sdk"
            got = await call_ok(session, "echo", {"message": message})
            check(got == message, f"echo returned {got!r}, not {message!r}")

            status = json.loads(await call_ok(session, "status", {}))
            check("actors" in status, f"status has no actors: {status}")

            df = await call_ok(session, "disk_usage", {"path": "/tmp"})
            check("/" in df and len(df.splitlines()) >= 2, f"disk_usage printed {df!r}")

            hosts = await call_ok(session, "dns_lookup", {"name": "localhost"})
            check("localhost" in hosts, f"dns_lookup printed {hosts!r}")

            # No path: /usr/share itself, which every Debian system has.
            listing = await call_ok(session, "list_dir", {})
            check(listing.strip(), "list_dir printed nothing for /usr/share")
            summary.append("tools/call: echo, status, disk_usage, dns_lookup, list_dir succeeded")

            # Arguments the schema refuses: a tool result with isError, saying why.
            bad = await session.call_tool("disk_usage", {"path": "tmp"}, read_timeout_seconds=REQUEST_TIMEOUT)
            check(bad.is_error, f"disk_usage with a relative path succeeded: {text_of(bad)}")
            kind = (bad.structured_content or {}).get("kind")
            check(kind == "validation", f"the refused call's kind is {kind!r}: {bad}")
            summary.append("disk_usage path=tmp: isError, kind validation")

            # An unknown tool: a JSON-RPC error, raised by the SDK.
            try:
                result = await session.call_tool("no_such_tool", {}, read_timeout_seconds=REQUEST_TIMEOUT)
            except MCPError as e:
                check("no_such_tool" in str(e), f"the error does not name the tool: {e}")
                summary.append(f"no_such_tool: JSON-RPC error {e.error.code}")
            else:
                check(result.is_error, f"calling an unknown tool succeeded: {result}")
                summary.append("no_such_tool: isError")
    return summary


async def auto_client_checks(argv):
    """The SDK's high-level Client, as its users get it: mode "auto" probes
    `server/discover` and, as warden answers it, speaks the stateless
    2026-07-28 protocol: no initialize handshake."""
    async with Client(server_params(argv), read_timeout_seconds=REQUEST_TIMEOUT) as client:
        version = client.protocol_version
        check(version == "2026-07-28", f"Client negotiated {version}, not 2026-07-28")
        listed = await client.list_tools()
        names = {t.name for t in listed.tools}
        check(DEFAULT_TOOLS <= names, f"tools/list at {version} lacks {sorted(DEFAULT_TOOLS - names)}")
        result = await client.call_tool("echo", {"message": "auto"})
        check(not result.is_error and text_of(result) == "auto", f"echo through Client: {result}")
        bad = await client.call_tool("disk_usage", {"path": "tmp"})
        check(bad.is_error, f"disk_usage with a relative path succeeded at {version}")
    return [f"Client(mode=auto): discovered {version}, tools/list, echo, a refused call"]


def leaves(e):
    """The exceptions inside anyio's (nested) exception groups."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for inner in e.exceptions for leaf in leaves(inner)]
    return [e]


def describe(e):
    if isinstance(e, Failure):
        return str(e)
    if isinstance(e, TimeoutError):
        return f"the session took longer than {SESSION_TIMEOUT:.0f}s"
    return f"{type(e).__name__}: {e}"


async def main(argv):
    with anyio.fail_after(SESSION_TIMEOUT):
        return await session_checks(argv) + await auto_client_checks(argv)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python_client.py WARDEN serve --config CONFIG")
    try:
        lines = anyio.run(main, sys.argv[1:])
    except Exception as e:
        sys.exit("\n".join(f"python_client: FAILED: {describe(leaf)}" for leaf in leaves(e)))
    for line in lines:
        print(f"python_client: {line}", file=sys.stderr)
    print("python_client: ok", file=sys.stderr)
