"""The web page on `reverie serve`'s own port: a browser opening http://HOST:PORT/ gets the page that `reverie export
--format web` writes (the same files, export/page/), sent to `?server=ws://HOST:PORT/`, so it plays a world of this
server with nothing exported or installed. WebSocket upgrades pass through to the protocol; any other request gets a
page file (with the static server's headers and types), a redirect from `/`, or a 404. Only GET is answered (the
WebSocket library reads no other method).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from export.serve import HEADERS, content_type, resolve
from export.web import PAGE


def _answer(status: HTTPStatus, body: bytes, kind: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers({**HEADERS, "Content-Type": kind, "Content-Length": str(len(body)), **(extra or {})})
    return Response(status.value, status.phrase, headers, body)


def page_response(connection: Any, request: Request) -> Response | None:
    """websockets' process_request hook: None lets a WebSocket handshake go on; else the HTTP answer."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    url = urlsplit(request.path)
    if url.path == "/" and "server" not in parse_qs(url.query):
        host = request.headers.get("Host", "")
        location = f"/?server=ws://{host}/" + (f"&{url.query}" if url.query else "")
        return _answer(HTTPStatus.FOUND, b"", "text/plain; charset=utf-8", {"Location": location})
    path = resolve(PAGE, url.path)
    if path is None:
        return _answer(HTTPStatus.NOT_FOUND, b"no such file of the page\n", "text/plain; charset=utf-8")
    return _answer(HTTPStatus.OK, path.read_bytes(), content_type(path))
