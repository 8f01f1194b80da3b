"""export/serve.py, `reverie export --format web --serve`'s errors, and the vendored onnxruntime-web runtime: the
headers that make a page cross-origin isolated (so onnxruntime-web's WASM backend gets threads), MIME types, nothing
served from outside the folder, loopback only; then in headless Chromium: the headers give a page
SharedArrayBuffer, and the vendored runtime loads from the served folder and runs a graph on threads. No model is
exported here (the CLI's export is replaced by a stub where a test needs one)."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser import browser, page  # noqa: F401  (fixtures)

from export.cli import main as export_main
from export.serve import HEADERS, FolderServer, ServeError, content_type, serve_folder

ORT = Path(__file__).resolve().parents[1] / "export" / "page" / "ort"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TYPES = {"index.html": "text/html", "a.js": "text/javascript", "b.mjs": "text/javascript",
         "c.wasm": "application/wasm", "d.onnx": "application/octet-stream", "e.bin": "application/octet-stream",
         "f.json": "application/json"}


@pytest.fixture
def site(tmp_path) -> Path:
    """A folder with a file of each type the page serves, a sub-folder without index.html, and beside the folder a
    secret plus a link to it from inside."""
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    for name in TYPES:
        (folder / name).write_bytes(f"content of {name}".encode())
    (folder / "sub" / "x.txt").write_text("in sub")
    (folder / ".hidden").write_text("SECRET")
    (tmp_path / "secret.txt").write_text("SECRET")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    return folder


def get(url: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request whose path is sent exactly as given (no client-side clean-up)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_files_come_with_isolation_headers_and_their_mime_types(site):
    with serve_folder(site) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        for name, mime in TYPES.items():
            status, headers, body = get(url, f"/{name}")
            assert status == 200 and body == f"content of {name}".encode()
            assert headers["content-type"].split(";")[0] == mime, name
            for key, value in HEADERS.items():
                assert headers[key.lower()] == value, (name, key)
        status, headers, body = get(url, "/")                       # the folder's index.html
        assert status == 200 and body == b"content of index.html"
        status, headers, body = get(url, "/c.wasm", method="HEAD")
        assert status == 200 and body == b"" and headers["content-type"] == "application/wasm"
        status, headers, _ = get(url, "/missing.js")                 # errors carry the headers too
        assert status == 404 and headers["cross-origin-embedder-policy"] == "require-corp"
    assert content_type("model/tables.bin") == "application/octet-stream"
    assert content_type("ORT.WASM") == "application/wasm"


def test_nothing_outside_the_folder_and_no_listings(site):
    with serve_folder(site) as url:
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt", "/link.txt",
                     "/..%2fsecret.txt", "/sub/..%5c..%5csecret.txt", "/.hidden", "/sub/", "/sub"):
            status, _, body = get(url, path)
            assert status in (301, 404), path                        # /sub: redirected to /sub/, which lists nothing
            assert b"SECRET" not in body and b"x.txt" not in body, path
        assert get(url, "/sub/x.txt")[2] == b"in sub"


def test_non_loopback_hosts_are_refused(site):
    with pytest.raises(ServeError, match="0.0.0.0: not a loopback address"):
        FolderServer(site, host="0.0.0.0")
    with serve_folder(site, host="localhost") as url:
        assert get(url, "/a.js")[0] == 200
    with pytest.raises(ServeError, match="no such folder"):
        FolderServer(site / "missing")


def test_a_port_in_use_is_named(site, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {port} on 127.0.0.1 is in use.*--port"):
            FolderServer(site, port=port)
        assert export_main(["--format", "web", "--serve", "--port", str(port)]) == 1   # before any export
        err = capsys.readouterr().err
        assert err.startswith(f"reverie export: error: port {port} ") and "--port" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, says", [
    (["--serve"], "--serve serves the web page: add --format web"),
    (["--format", "tensorrt", "--serve"], "add --format web"),
    (["--port", "8080"], "--port serves the web page: add --format web"),
    (["--format", "web", "--port", "8080", "--out", "x"], "--port is the port of --serve"),
    (["--format", "web"], "--format web needs --out DIR"),
    (["--format", "web", "--serve", "--port", "70000"], "--port 70000: out of range"),
    (["--format", "web", "--serve", "--port", "-1"], "--port -1: out of range"),
    (["--format", "web", "--out", "x", "--precision", "fp16"], "leave out --precision"),
])
def test_cli_mistakes_are_one_line_errors(argv, says, capsys):
    assert export_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("reverie export: error: ") and says in err and err.count("\n") == 1


def test_cli_serves_the_export_until_ctrl_c(monkeypatch, capsys):
    import export.web

    def stub_export(checkpoint, out_dir):
        out = Path(out_dir)
        out.mkdir(parents=True)
        (out / "index.html").write_text("the page")
        return out

    seen = {}

    def one_request_then_ctrl_c(self, poll_interval=0.5):
        fetch = threading.Thread(target=lambda: seen.update(answer=get(self.url, "/")))
        fetch.start()
        self.handle_request()   # answered on a thread of its own, which the fetch waits for
        fetch.join()
        raise KeyboardInterrupt

    monkeypatch.setattr(export.web, "export_web", stub_export)
    monkeypatch.setattr(FolderServer, "serve_forever", one_request_then_ctrl_c)
    assert export_main(["--format", "web", "--serve", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    status, headers, body = seen["answer"]
    assert status == 200 and body == b"the page" and headers["cross-origin-opener-policy"] == "same-origin"
    assert err == "" and "serving it at http://127.0.0.1:" in out
    folder = Path(out.split("wrote ", 1)[1].split(" (", 1)[0])
    assert not folder.exists()                                   # the temporary export is gone after Ctrl-C


def test_vendored_runtime_matches_its_version_file():
    lines = dict(ln.split(": ", 1) for ln in (ORT / "VERSION").read_text().splitlines() if not ln.startswith("#"))
    assert lines["package"] == "onnxruntime-web" and lines["files"].split() == list(ORT_FILES)
    assert sorted(p.name for p in ORT.iterdir()) == sorted([*ORT_FILES, "LICENSE", "VERSION", "refresh.sh"])
    for name in ORT_FILES:   # a git LFS pointer or a hand-edited file shows here
        assert hashlib.sha256((ORT / name).read_bytes()).hexdigest() == lines[f"sha256 {name}"], name
    assert "Copyright (c) Microsoft Corporation" in (ORT / "LICENSE").read_text()


def test_browser_tests_skip_only_where_nothing_is_installed_and_never_in_ci(monkeypatch, tmp_path):
    import browser as helper

    monkeypatch.setattr(helper, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(helper.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="playwright package and .*no-chromium missing"):
        helper.require_browser()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        helper.require_browser()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(helper.importlib.util, "find_spec", lambda name: object())   # playwright, no chromium
    with pytest.raises(pytest.fail.Exception, match="no-chromium missing"):
        helper.require_browser()


ISOLATION_PAGE = """<!doctype html><meta charset="utf-8"><title>isolation</title>
<script>window.isolation = {isolated: self.crossOriginIsolated === true,
                            sab: typeof SharedArrayBuffer === "function"};</script>"""


def test_the_headers_make_the_page_cross_origin_isolated(page, tmp_path):  # noqa: F811
    (tmp_path / "index.html").write_text(ISOLATION_PAGE)
    with serve_folder(tmp_path) as url:
        page.goto(url)
        assert page.evaluate("window.isolation") == {"isolated": True, "sab": True}
    # the control: the same page from a server without the headers gets no SharedArrayBuffer
    plain = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: SimpleHTTPRequestHandler(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{plain.server_address[1]}/")
        assert page.evaluate("window.isolation") == {"isolated": False, "sab": False}
    finally:
        plain.shutdown()
        plain.server_close()
    assert page.errors == []


ORT_PAGE = """<!doctype html><meta charset="utf-8"><title>ort</title>
<script type="module">
import * as ort from "./ort/ort.wasm.min.mjs";
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = 2;
try {
  const bytes = new Uint8Array(await (await fetch("add.onnx")).arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"]});
  const x = new ort.Tensor("float32", Float32Array.from([1, 2, 3, 4]), [4]);
  const out = await session.run({x});
  window.result = {y: Array.from(out.y.data), threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated,
                   version: ort.env.versions.web};
} catch (e) { window.result = {error: String(e)}; }
</script>"""


def test_vendored_runtime_runs_a_graph_on_threads(page, tmp_path):  # noqa: F811
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    shutil.copytree(ORT, tmp_path / "ort", ignore=shutil.ignore_patterns("refresh.sh"))
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "add.onnx"))
    (tmp_path / "index.html").write_text(ORT_PAGE)
    version = dict(ln.split(": ", 1) for ln in (ORT / "VERSION").read_text().splitlines()
                   if not ln.startswith("#"))["version"]
    with serve_folder(tmp_path) as url:
        page.goto(url)
        page.wait_for_function("window.result !== undefined")
        result = page.evaluate("window.result")
    assert result == {"y": [2, 4, 6, 8], "threads": 2, "isolated": True, "version": version}
    assert page.errors == []
