"""The clients of `reverie serve` (play/client.py) against real servers: `reverie bench --serve` writes its JSON,
`reverie play --connect --headless` plays and exits 0, a missing server and a refused token are one line each, and
nginx with deploy/nginx/reverie.conf spreads 8 clients over two servers, all of them getting frames.

The servers are `reverie serve` processes of a tiny random model on loopback ports (--fps max), and nginx is Debian's
/usr/sbin/nginx with a temporary prefix and a config made from the shipped one. Where nginx is missing these tests
skip, except in CI (the CI variable set), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiny_model import FRAME, SPEC, tiny_checkpoint

from play.client import Client, ClientError, RemoteWorld, server_url
from play.world import PlayError

ROOT = Path(__file__).resolve().parents[1]
NGINX = Path("/usr/sbin/nginx")
SHIPPED_CONF = ROOT / "deploy" / "nginx" / "reverie.conf"
TOKEN = "test-token"
START_SECONDS = 120         # a server's start: load, export the graphs once, bind
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    """Return once `port` accepts connections; fail with the process's log if it exits or the time runs out."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{what} did not listen on port {port} in {START_SECONDS} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def reverie(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reverie_cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[list[int]]:
    """Two `reverie serve` processes of a tiny model (--fps max, --token); their ports."""
    folder = tmp_path_factory.mktemp("serve")
    model = tiny_checkpoint(folder / "tiny.safetensors")
    procs, ports = [], []
    try:
        for i in range(2):
            port = free_port()
            log = folder / f"serve{i}.log"
            with open(log, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "reverie_cli", "serve", "--model", str(model), "--port", str(port),
                     "--fps", "max", "--max-worlds", str(CLIENTS), "--token", TOKEN, "--threads", "1"],
                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}))
            ports.append(port)
        for i, (proc, port) in enumerate(zip(procs, ports)):
            wait_for_port(port, proc, f"reverie serve #{i}", folder / f"serve{i}.log")
        yield ports
    finally:
        for proc in procs:
            stop(proc)


def require_nginx() -> None:
    if NGINX.exists():
        return
    message = f"{NGINX} is missing (apt-get install nginx)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the nginx test", pytrace=False)
    pytest.skip(message)


def nginx_config(shipped: str, listen: int, upstreams: list[int], prefix: Path) -> str:
    """A whole nginx.conf for a temporary prefix: the shipped server block with loopback ports, and an access log of
    which upstream each connection went to."""
    servers = [m for m in re.finditer(r"^\s*server\s+[\d.]+:\d+[^;]*;", shipped, re.M)]
    assert len(servers) >= 2, "the shipped config names two or more servers in its upstream"
    lines = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    body = shipped[:servers[0].start()] + "\n" + lines + shipped[servers[-1].end():]
    body, n = re.subn(r"^(\s*)listen\s+\d+\s*;", rf"\1listen 127.0.0.1:{listen};", body, flags=re.M)
    assert n == 1, "the shipped config's server block listens on one port"
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                              "scgi"))
    return (f"daemon off;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n    log_format upstream '$upstream_addr';\n"
            f"    access_log {prefix / 'access.log'} upstream;\n{temp}\n{body}\n}}\n")


@pytest.fixture
def nginx(tmp_path, servers) -> Iterator[int]:
    """nginx on a loopback port in front of both servers, from the shipped config; its port."""
    require_nginx()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(SHIPPED_CONF.read_text(), port, servers, prefix))
    log = prefix / "error.log"
    check = subprocess.run([str(NGINX), "-t", "-p", str(prefix), "-c", str(conf), "-e", str(log)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    with open(prefix / "stdout.log", "w") as out:
        proc = subprocess.Popen([str(NGINX), "-p", str(prefix), "-c", str(conf), "-e", str(log)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, "nginx", log)
        yield port
    finally:
        stop(proc)


# ---- through nginx ---------------------------------------------------------------------------------------------------
def test_nginx_spreads_eight_clients_over_both_servers_and_all_get_frames(nginx, tmp_path):
    url = f"ws://127.0.0.1:{nginx}/"

    async def play() -> list[int]:
        clients = []
        try:
            for _ in range(CLIENTS):          # one after another: least_conn sees each open connection
                clients.append(await Client.connect(url, TOKEN))
            worlds = [await c.create(seed=i) for i, c in enumerate(clients)]
            for _ in range(5):
                for c, w in zip(clients, worlds):
                    frame = await c.next_frame(w, timeout=30)
                    assert frame.image.shape == FRAME
                    await c.step(w, np.eye(SPEC.size, dtype=np.float32)[0])
            return [c.frames_received(w) for c, w in zip(clients, worlds)]
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    counts = asyncio.run(play())
    assert all(n >= 5 for n in counts), counts
    access = tmp_path / "nginx" / "access.log"
    deadline = time.monotonic() + 30          # nginx writes a connection's line when it closes
    while time.monotonic() < deadline and len(access.read_text().split()) < CLIENTS:
        time.sleep(0.2)
    upstreams = access.read_text().split()
    assert len(upstreams) == CLIENTS, upstreams
    assert len(set(upstreams)) == 2, f"every connection went to one server: {upstreams}"


def test_a_world_moves_between_servers_through_its_save_game(servers):
    async def move() -> tuple[int, int]:
        a = await Client.connect(f"ws://127.0.0.1:{servers[0]}/", TOKEN)
        b = await Client.connect(f"ws://127.0.0.1:{servers[1]}/", TOKEN)
        try:
            wa = await a.create(seed=3)
            for _ in range(3):
                await a.next_frame(wa, timeout=30)
            data = await a.save(wa)
            wb = await b.create(seed=9)
            await b.next_frame(wb, timeout=30)
            await b.load(wb, data)
            frame = await b.next_frame(wb, timeout=30)
            return len(data), frame.image.shape
        finally:
            await asyncio.gather(a.close(), b.close())

    size, shape = asyncio.run(move())
    assert size > 0 and shape == FRAME


# ---- reverie bench --serve -------------------------------------------------------------------------------------------
def test_bench_serve_writes_per_client_and_total_numbers(servers, tmp_path):
    out = tmp_path / "serve.json"
    r = reverie("bench", "--serve", f"127.0.0.1:{servers[0]}", "--token", TOKEN, "--clients", "2", "--seconds", "2",
                "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "world-frames/s" in r.stdout
    d = json.loads(out.read_text())
    assert d["clients"] == 2 and d["server"] == f"ws://127.0.0.1:{servers[0]}/" and d["seconds"] >= 1.9
    assert d["world_frames_per_s"] > 0 and d["frames"] > 0
    assert 0 < d["server_tick_ms_p50"] <= d["server_tick_ms_p99"]
    assert d["welcome"]["model"]["name"] and d["welcome"]["fps"] == 0
    assert d["machine"]["cpu"] and d["machine"]["cpu_count"] >= 1 and d["date"].startswith("20")
    assert len(d["per_client"]) == 2
    for c in d["per_client"]:
        assert c["frames"] > 0 and c["fps"] > 0 and c["round_trips"] > 0
        assert 0 < c["round_trip_p50_ms"] <= c["round_trip_p99_ms"]


def test_bench_serve_paced_by_fps(servers, tmp_path):
    out = tmp_path / "paced.json"
    r = reverie("bench", "--serve", f"ws://127.0.0.1:{servers[0]}", "--token", TOKEN, "--seconds", "2", "--fps", "10",
                "--json", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["fps_cap"] == 10 and 10 <= d["per_client"][0]["round_trips"] <= 25


# ---- reverie play --connect ------------------------------------------------------------------------------------------
def test_play_connect_headless_plays_frames_and_exits_0(servers, tmp_path):
    out = tmp_path / "play.json"
    r = reverie("play", "--connect", f"127.0.0.1:{servers[0]}", "--token", TOKEN, "--headless", "--frames", "30",
                "--json", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["frames"] == 30 and d["model_steps"] == 30 and d["device"] == "remote"
    assert d["round_trip_ms_p50"] > 0 and f"127.0.0.1:{servers[0]}" in d["backend"]


def test_remote_world_resets_pauses_saves_and_loads(servers, tmp_path):
    world = RemoteWorld(f"127.0.0.1:{servers[1]}", TOKEN, seed=1)
    try:
        assert world.spec == SPEC and world.frame_shape == FRAME
        assert world.reset().frame.shape == FRAME
        for _ in range(3):
            assert world.step(np.eye(SPEC.size, dtype=np.float32)[1]).frame.shape == FRAME
        world.save(tmp_path / "w.safetensors")
        assert world.load(tmp_path / "w.safetensors").frame.shape == FRAME
        world.pause(True)
        assert world.step(SPEC.null()).frame.shape == FRAME        # one step while paused ('.')
        assert world.reset().frame.shape == FRAME                  # Enter and F9 while paused show their frame
        assert world.load(tmp_path / "w.safetensors").frame.shape == FRAME
        world.pause(False)
        assert world.step(SPEC.null()).frame.shape == FRAME
        assert world.round_trip_ms > 0
        with pytest.raises(PlayError, match="set by the server"):
            world.steps = 2
    finally:
        world.close()


# ---- errors: one line naming the address and what to do ------------------------------------------------------------
@pytest.mark.parametrize("command", ["bench", "play"])
def test_no_server_there_is_one_line(command):
    port = free_port()
    args = ["--serve", f"127.0.0.1:{port}"] if command == "bench" else ["--connect", f"127.0.0.1:{port}",
                                                                        "--headless"]
    r = reverie(command, *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "reverie serve" in lines[0], r.stderr


@pytest.mark.parametrize("command", ["bench", "play"])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_refused_token_is_one_line(servers, command, token):
    address = f"127.0.0.1:{servers[0]}"
    args = ["--serve", address] if command == "bench" else ["--connect", address, "--headless"]
    r = reverie(command, *args, *(["--token", token] if token else []))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "--token" in lines[0], r.stderr


def test_bad_addresses_and_flags_are_refused():
    for address in ("nonsense:xx", "http://127.0.0.1:80", ":::"):
        with pytest.raises(ClientError, match="HOST:PORT"):
            server_url(address)
    assert server_url("127.0.0.1") == "ws://127.0.0.1:8765/"
    assert server_url("[::1]:9000") == "ws://[::1]:9000/"
    r = reverie("bench", "--serve", "127.0.0.1:1", "--clients", "300")
    assert r.returncode == 2 and "--clients" in r.stderr
    r = reverie("play", "--connect", "127.0.0.1:1", "--real", "--headless")
    assert r.returncode == 2 and "--connect" in r.stderr
