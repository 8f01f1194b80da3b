"""A small static server for one folder (the web export's page), with the headers a cross-origin isolated page needs.

onnxruntime-web's WASM backend runs threads only where `SharedArrayBuffer` exists, and a browser gives a page that
only when it is cross-origin isolated: the page is served with `Cross-Origin-Opener-Policy: same-origin` and
`Cross-Origin-Embedder-Policy: require-corp`, and every file it loads is allowed to it (`Cross-Origin-Resource-Policy:
same-origin`). Opening index.html from disk (file://) or from a plain `python -m http.server` gives none of these, and
the page runs on one thread. This server sends them with every answer, the right MIME types (a module script or a
.wasm with the wrong one is refused by the browser), `Cache-Control: no-cache` (a re-export is picked up on reload),
no directory listings and nothing outside the folder.

    with serve_folder(folder) as url:        # a thread on 127.0.0.1, a free port: tests and benchmarks
        ...
    server = FolderServer(folder, port=8000)  # `reverie export --format web --serve`: server.serve_forever()

The pieces a later server of the same files can reuse whatever it is built on: HEADERS, content_type() and
resolve() (URL path -> file inside the folder, or None).
"""

from __future__ import annotations

import errno
import ipaddress
import mimetypes
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from engine.errors import ReverieError

LOOPBACK = "127.0.0.1"
POLL_INTERVAL_S = 0.1       # how often serve_forever looks for a shutdown request

# sent with every answer, errors included
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}

# the page's files first; anything else falls back to Python's mimetypes table
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
DEFAULT_TYPE = "application/octet-stream"


class ServeError(ReverieError, OSError):
    """A folder that cannot be served, a host that is not loopback, or a port that is taken."""


def content_type(path: str | os.PathLike) -> str:
    """The Content-Type of a file, by its suffix (the page's own table first)."""
    suffix = Path(path).suffix.lower()
    return MIME_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or DEFAULT_TYPE


def resolve(folder: Path, url_path: str) -> Path | None:
    """The file under `folder` that a request's URL path names (`/` and folders give their index.html), or None
    where the path leaves the folder (`..`, a link pointing out, a backslash or NUL), names a hidden file or folder
    (`.git`, a temporary `.name.tmp`) or names no file."""
    parts = unquote(urlsplit(url_path).path).split("/")
    if any(p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        return None
    root = folder.resolve()
    target = root.joinpath(*[p for p in parts if p])
    if target.is_dir():
        target = target / "index.html"
    try:
        real = target.resolve(strict=True)
    except (OSError, RuntimeError):   # missing, or a loop of links
        return None
    if root not in real.parents or not real.is_file():
        return None
    return real


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a name: what it resolves to
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


class FolderHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of the files under the server's folder, with HEADERS and the page's MIME types."""

    server: FolderServer
    server_version = "reverie"

    def version_string(self) -> str:
        return self.server_version

    def send_head(self):
        if resolve(self.server.folder, self.path) is None:
            self.send_error(HTTPStatus.NOT_FOUND, "no such file in the served folder")
            return None
        return super().send_head()   # a folder named without its trailing / is redirected to it, as usual

    def translate_path(self, path: str) -> str:
        # send_head has checked the path with resolve(); map it into the folder (never the process's cwd)
        return str(self.server.folder.resolve().joinpath(*[p for p in unquote(urlsplit(path).path).split("/") if p]))

    def guess_type(self, path) -> str:
        return content_type(path)

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    def end_headers(self) -> None:
        for name, value in HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class FolderServer(ThreadingHTTPServer):
    """An HTTP server of one folder on loopback (a thread per request); `url` is where a browser finds it.

    `folder` is read at each request, so it may be pointed elsewhere after the port is bound (the CLI binds before it
    exports, so a taken port fails at once rather than after the export)."""

    daemon_threads = True

    def __init__(self, folder: str | os.PathLike, host: str = LOOPBACK, port: int = 0, *, allow_remote: bool = False,
                 quiet: bool = True):
        self.folder = Path(folder)
        self.quiet = quiet
        if not self.folder.is_dir():
            raise ServeError(f"{self.folder}: no such folder to serve")
        if not 0 <= port <= 65535:
            raise ServeError(f"port {port} is out of range; pass 1..65535, or 0 for a free one")
        if not allow_remote and not is_loopback(host):
            raise ServeError(f"refusing to serve {self.folder} on {host}: not a loopback address, so other machines "
                             f"could read it; serve on {LOOPBACK} (allow_remote=True to mean it)")
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), FolderHandler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is in use (another server?); pass another port with "
                                 "--port, or --port 0 for a free one") from None
            raise ServeError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's full name (socket.getfqdn), which can hang where lookups
        # are refused; the name is only used in logs
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):   # the browser closed or reloaded mid-answer
            return
        super().handle_error(request, client_address)


@contextmanager
def serve_folder(folder: str | os.PathLike, host: str = LOOPBACK, port: int = 0, *, allow_remote: bool = False,
                 quiet: bool = True) -> Iterator[str]:
    """Serve `folder` from a background thread for the `with` block; yields the URL (`http://127.0.0.1:PORT/`)."""
    server = FolderServer(folder, host, port, allow_remote=allow_remote, quiet=quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S},
                              name=f"serve {folder}", daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
