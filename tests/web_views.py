"""streams/web.py's views without a web server: stand-ins for Faust's view, request and app, so a test calls a
view as the server would (tests/unit/test_admin_views.py with stand-in stores, the erasure races on real ones)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from typing import Any

import faust.web  # noqa: F401  (streams.web builds faust.web.View classes)
import orjson
from pydantic import SecretStr
from yarl import URL

from streams import web as web_module

ADMIN, API = "admin-secret", "api-secret"


class Response:
    def __init__(self, body: Any, status: int) -> None:
        self.body, self.status, self.headers = body, status, {}


class Web:
    def json(self, doc: Any, status: int = 200) -> Response:
        return Response(doc, status)

    def bytes(self, raw: bytes, content_type: str | None = None) -> Response:
        return Response(orjson.loads(raw), 200)


class Body:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def read(self, n: int) -> bytes:
        out, self.raw = self.raw[:n], self.raw[n:]
        return out


class Request:
    """``query`` as parameters, or ``raw_query`` as the percent-encoded query string a client sent (decoded by
    yarl as aiohttp decodes it: bytes that are not UTF-8 become U+FFFD)."""

    def __init__(self, body: Any = None, token: str = ADMIN, query: dict[str, str] | None = None,
                 method: str = "POST", raw_query: str | None = None) -> None:
        raw = orjson.dumps(body) if body is not None else b""
        self.method, self.content, self.content_length = method, Body(raw), len(raw)
        self.headers = {"Authorization": f"Bearer {token}"}
        if raw_query is None:
            self.rel_url = URL.build(path="/", query=query or {})
            self.query = query or {}
            self.query_string = "&".join(f"{k}={v}" for k, v in self.query.items())
        else:
            self.rel_url = URL(f"/?{raw_query}", encoded=True)
            self.query = self.rel_url.query
            self.query_string = self.rel_url.query_string


async def _no_emit(_: Any) -> None:
    pass


def register_pages(engine: Any, levers: Any, erasures: Any, tombstone: Callable[[str, str], Awaitable[None]],
                   max_rps: float, stopping: asyncio.Event | None = None,
                   emit: Callable[[Any], Awaitable[None]] = _no_emit) -> dict[str, Any]:
    """``register_views`` on a stand-in app; the views by path. Outputs of /decide go to ``emit`` (dropped)."""
    pages: dict[str, Any] = {}
    app = types.SimpleNamespace(page=lambda path: (lambda fn: pages.__setitem__(path, fn) or fn))
    web_module.register_views(app, engine, SecretStr(API), SecretStr(ADMIN), emit, levers, erasures, tombstone,
                              max_rps, stopping or asyncio.Event())
    return pages
