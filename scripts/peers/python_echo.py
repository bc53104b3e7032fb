"""A Python MCP echo server (the official `mcp` SDK, stdio): a peer for
scripts/bench. Its `echo` tool answers the message it is given, as warden's
builtin and the bare rmcp echo do."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("python-echo")


@server.tool()
def echo(message: str) -> str:
    """Echo the given message back."""
    return message


if __name__ == "__main__":
    server.run("stdio")
