"""The review app's guards, as one ASGI middleware, and its CSRF tokens.

* **Host**: bound to a loopback address, only requests naming that address (``127.0.0.1``, ``localhost``,
  ``[::1]``) are answered, so a web page cannot reach the app through DNS rebinding.
* **Access token** (``--token``; required, or generated and printed, with a non-loopback ``--host``): every
  request must carry it, as ``?token=`` (then kept in an HttpOnly, SameSite=Strict cookie), the cookie, or an
  ``Authorization: Bearer`` header. Compared in constant time.
* **CSRF**: every write (POST) must carry ``X-CSRF-Token`` (or a ``csrf`` form field) equal to an HMAC of the
  browser's session cookie under a secret made when the app starts, and must not come from another origin.
* **Headers**: a Content-Security-Policy that allows only the app's own scripts, styles and images (no inline
  script runs, so an unescaped caption could not run code either), ``nosniff``, no referrer, no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

SESSION_COOKIE = "sgid_session"
TOKEN_COOKIE = "sgid_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
NO_STORE = (b"cache-control", b"no-store")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Csrf:
    """CSRF tokens bound to the browser's session cookie."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode("utf-8"), hashlib.sha256).hexdigest()

    def check(self, session: str | None, token: str | None) -> bool:
        return bool(session and token) and hmac.compare_digest(self.token(session or ""), token or "")


def cookies(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key:
                    found[key] = val
    return found


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class Guard:
    """ASGI middleware: host check, access token, security headers (CSRF is checked by the write routes)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: tuple[str, ...] | None, token: str | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts  # None: any Host header (the token guards a public bind)
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = urlsplit(f"//{header(scope, b'host') or ''}").hostname or ""
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _plain(send, 400, "unknown Host header; open the address sgid review printed")
            return
        set_cookie = None
        if self.token is not None:
            given = self._given_token(scope)
            if given is None or not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
                await _plain(send, 401, "this sgid review server needs its access token: open the URL it printed")
                return
            if cookies(scope).get(TOKEN_COOKIE) != self.token:
                set_cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] not in {k for k, _ in HEADERS}]
                headers += HEADERS
                if not any(k == NO_STORE[0] for k, _ in headers):  # pages are never cached; thumbnails say so
                    headers.append(NO_STORE)
                if set_cookie:
                    headers.append((b"set-cookie", set_cookie))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _given_token(self, scope: Scope) -> str | None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return query[0]
        bearer = header(scope, b"authorization")
        if bearer and bearer.lower().startswith("bearer "):
            return bearer[7:].strip()
        return cookies(scope).get(TOKEN_COOKIE)


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS, NO_STORE],
        }
    )
    await send({"type": "http.response.body", "body": body})
