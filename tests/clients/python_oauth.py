#!/usr/bin/env python3
"""The official Python SDK's OAuth client (PyPI `mcp`) against `warden serve
--http` with `[auth] mode = "jwt"`, and a test authorization server on
loopback that this script runs itself.

Usage: python_oauth.py AS_PORT WARDEN_URL SIGNING_KEY_PEM JWKS_JSON

The authorization server (RFC 8414 metadata, dynamic client registration,
authorization code with PKCE S256, RFC 9207 `iss` on the redirect, ES256
access tokens bound to the `resource` the client names, its JWKS at
/jwks.json) approves every request at once; its first token carries at most `files`
(as if the person consented to that much), later ones what was asked for. The client knows only warden's URL: warden's 401 sends it
to the protected resource metadata, from there to this server, where it
registers, authorizes and gets a token. With it the client lists the tools
it may see (`echo`, `secret`; not `admin`) and calls `secret`. Its call of
`admin` is refused 403 insufficient_scope, naming `admin`: the SDK steps up,
asking for a token with that scope, and the call then runs. Exits 1 saying
what failed; run by tests/it/auth.rs.
"""

import base64
import hashlib
import json
import secrets
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx2
import jwt
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

DEADLINE = 60.0


class Failure(Exception):
    """A check that did not hold."""


def check(cond, what):
    if not cond:
        raise Failure(what)


class Issuer:
    """What the authorization server saw and issued."""

    def __init__(self, port, signing_key, jwks):
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.signing_key = signing_key
        self.jwks = jwks
        self.clients = {}
        self.codes = {}
        self.tokens = []  # (scope, resource) of each token issued

    def metadata(self):
        u = self.url
        return {
            "issuer": u,
            "authorization_endpoint": f"{u}/authorize",
            "token_endpoint": f"{u}/token",
            "registration_endpoint": f"{u}/register",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "authorization_response_iss_parameter_supported": True,
            "scopes_supported": ["files", "admin"],
        }

    def serve(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body=None, headers=()):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def form(self):
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    return json.loads(raw)
                return {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/.well-known/oauth-authorization-server":
                    return self.reply(200, issuer.metadata())
                if url.path == "/jwks.json":
                    return self.reply(200, issuer.jwks)
                if url.path == "/authorize":
                    q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                    client = issuer.clients.get(q.get("client_id"))
                    if client is None or q.get("redirect_uri") not in client["redirect_uris"]:
                        return self.reply(400, {"error": "invalid_request"})
                    if q.get("code_challenge_method") != "S256":
                        return self.reply(400, {"error": "invalid_request"})
                    code = secrets.token_urlsafe(16)
                    issuer.codes[code] = q
                    location = q["redirect_uri"] + "?" + urllib.parse.urlencode(
                        {"code": code, "state": q.get("state", ""), "iss": issuer.url}
                    )
                    return self.reply(302, None, [("Location", location)])
                return self.reply(404, {"error": "not_found"})

            def do_POST(self):
                path = urllib.parse.urlsplit(self.path).path
                body = self.form()
                if path == "/register":
                    client_id = secrets.token_urlsafe(8)
                    info = dict(body, client_id=client_id, token_endpoint_auth_method="none")
                    issuer.clients[client_id] = info
                    return self.reply(201, info)
                if path == "/token":
                    asked = issuer.codes.pop(body.get("code", ""), None)
                    if asked is None or body.get("grant_type") != "authorization_code":
                        return self.reply(400, {"error": "invalid_grant"})
                    verifier = body.get("code_verifier", "")
                    challenge = (
                        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                        .rstrip(b"=")
                        .decode()
                    )
                    if challenge != asked["code_challenge"]:
                        return self.reply(400, {"error": "invalid_grant", "error_description": "PKCE"})
                    resource = body.get("resource") or asked.get("resource")
                    # The person consents step by step: the first token
                    # carries `files` at most, whatever was asked for.
                    asked_for = asked.get("scope", "").split()
                    if not issuer.tokens:
                        asked_for = [s for s in asked_for if s == "files"]
                    scope = " ".join(asked_for)
                    now = int(time.time())
                    token = jwt.encode(
                        {"iss": issuer.url, "aud": resource, "sub": "oauth-user", "scope": scope,
                         "iat": now, "exp": now + 600},
                        issuer.signing_key,
                        algorithm="ES256",
                        headers={"kid": "es256-a"},
                    )
                    issuer.tokens.append((scope, resource))
                    return self.reply(
                        200,
                        {"access_token": token, "token_type": "Bearer", "expires_in": 600, "scope": scope},
                    )
                return self.reply(404, {"error": "not_found"})

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()


class Memory:
    """Token storage in memory."""

    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


class Browser:
    """Stands in for the person at the browser: follows the authorization
    URL to the redirect and hands its parameters back to the SDK."""

    def __init__(self):
        self.redirect = None

    async def open(self, url):
        def fetch():
            class NoFollow(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args, **kwargs):
                    return None

            opener = urllib.request.build_opener(NoFollow)
            try:
                opener.open(url, timeout=10)
            except urllib.error.HTTPError as e:
                if e.code == 302:
                    return e.headers["Location"]
                raise
            raise Failure(f"the authorization server did not redirect: {url}")

        self.redirect = await anyio.to_thread.run_sync(fetch)

    async def callback(self):
        q = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(self.redirect).query).items()}
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))


def wait_for(url):
    until = time.time() + 20
    while time.time() < until:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    raise Failure(f"{url} did not answer")


async def session(url):
    browser = Browser()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="warden test",
            redirect_uris=["http://127.0.0.1:1/callback"],
            grant_types=["authorization_code"],
            response_types=["code"],
            scope="files",
        ),
        storage=Memory(),
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as s:
                await s.initialize()
                names = sorted(t.name for t in (await s.list_tools()).tools)
                check(names == ["echo", "secret"], f"a `files` token lists {names}")
                r = await s.call_tool("secret", {"message": "hi"})
                check(not r.is_error and r.content[0].text == "hi", f"secret answered {r}")
                # `admin` needs a scope the token lacks: 403 insufficient_scope,
                # the SDK asks for it and calls again.
                r = await s.call_tool("admin", {"message": "step up"})
                check(not r.is_error and r.content[0].text == "step up", f"admin answered {r}")
                names = sorted(t.name for t in (await s.list_tools()).tools)
                check("admin" in names, f"after the step-up the list is {names}")


async def bounded(url):
    with anyio.fail_after(DEADLINE):
        await session(url)


def main():
    as_port, url, key_path, jwks_path = sys.argv[1:5]
    issuer = Issuer(int(as_port), open(key_path).read(), json.load(open(jwks_path)))
    issuer.serve()
    print("python_oauth: issuer ready", file=sys.stderr, flush=True)
    wait_for(url.rsplit("/mcp", 1)[0] + "/health")
    anyio.run(bounded, url)
    check(len(issuer.clients) == 1, f"{len(issuer.clients)} clients registered")
    scopes = [s for s, _ in issuer.tokens]
    resources = {r for _, r in issuer.tokens}
    check(len(scopes) == 2, f"tokens issued for scopes {scopes}")
    check("admin" in scopes[1].split(), f"the step-up asked for {scopes[1]!r}")
    check(resources == {url}, f"tokens were for {resources}, not {url}")
    print(f"python_oauth: ok: 1 client registered, tokens for {scopes}, resource {url}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"python_oauth: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
