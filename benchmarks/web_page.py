"""The web page's frame rate in headless Chromium beside `reverie bench` on the same machine, one right after the
other (a ratio, not a lone number).

    python benchmarks/web_page.py [--model CKPT | --folder SITE] [--threads 2] [--seconds 20] [--json OUT.json]

Exports the model's page (export.web.export_web) to a temporary folder unless --folder names one already exported,
serves it with export/serve.py (cross-origin isolated, so onnxruntime-web's WASM backend runs its threads), opens
it in Debian's Chromium (tests/browser.py's flags) at `?fps=max&threads=N`, and waits for `window.reverie.ready`
(the first frame): that wait, from navigation, is `first_frame_s`. After --warmup seconds it samples
`window.reverie.stats()` every second for --seconds: fps is the frames counted over the whole window; the page's
p50/p99 are over its last 120 frames, so p50_ms and p99_ms here are the medians of the samples' and p99_ms_max
the largest; cross_origin_isolated says the page could use threads. Then Chromium is closed and `reverie bench
--threads N` runs the same model in Python; the JSON holds both, the folder's size, the ratios web / bench, and the
1-minute load average before each half (other work on the cores shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.errors import ReverieError
from engine.knobs import arg_type, check_threads
from engine.output import check_count, prepare_output, write_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EVERY_S = 1.0
LOAD_TIMEOUT_S = 300.0      # export folder to first frame: 15 MB of WASM and the graphs, compiled on a busy CPU
STATS = "() => ({...window.reverie.stats(), t_ms: performance.now()})"
WATCH_READY = """() => {
  window.__bench = {};
  window.reverie.ready.then(() => { window.__bench.ready_ms = performance.now(); },
                            (e) => { window.__bench.error = String((e && e.message) || e); });
}"""


class WebBenchError(ReverieError, RuntimeError):
    """A page that did not load, or a run that failed."""


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def measure_page(url: str, threads: int, warmup_s: float, seconds: float) -> dict:
    """Open the served page at ?fps=max, wait for its first frame, warm up, then sample its stats."""
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import launch_chromium  # the browser's flags live in one place
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        try:
            page = chromium.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            try:
                page.goto(f"{url}?fps=max&threads={threads}", wait_until="domcontentloaded",
                          timeout=LOAD_TIMEOUT_S * 1e3)
                page.wait_for_function("() => window.reverie !== undefined", timeout=LOAD_TIMEOUT_S * 1e3)
                page.evaluate(WATCH_READY)
                page.wait_for_function("() => 'ready_ms' in window.__bench || 'error' in window.__bench",
                                       timeout=LOAD_TIMEOUT_S * 1e3)
            except PlaywrightError as e:
                raise WebBenchError(f"the page did not reach its first frame: {str(e).splitlines()[0]}"
                                    + (f" (page errors: {'; '.join(errors)})" if errors else "")) from None
            first_frame_wall_s = time.perf_counter() - t0
            watched = page.evaluate("window.__bench")
            if "error" in watched:
                raise WebBenchError(f"the page failed to load: {watched['error']}")
            time.sleep(warmup_s)
            start = page.evaluate(STATS)
            samples = []
            while not samples or (samples[-1]["t_ms"] - start["t_ms"]) / 1e3 < seconds:
                time.sleep(SAMPLE_EVERY_S)
                samples.append(page.evaluate(STATS))
            error = page.evaluate("window.reverie.error()")
            isolated = page.evaluate("self.crossOriginIsolated")   # threads were possible (the served headers)
            version = chromium.version
        finally:
            chromium.close()
    if error or errors:
        raise WebBenchError(f"the page failed while measured: {error or '; '.join(errors)}")
    end = samples[-1]
    elapsed = (end["t_ms"] - start["t_ms"]) / 1e3
    return {
        "fps": (end["frames"] - start["frames"]) / elapsed,
        "p50_ms": statistics.median(s["p50_ms"] for s in samples),
        "p99_ms": statistics.median(s["p99_ms"] for s in samples),
        "p99_ms_max": max(s["p99_ms"] for s in samples),
        "backend": end.get("backend"), "cross_origin_isolated": isolated, "steps": end.get("steps"),
        "guidance": end.get("guidance"),
        "frames": end["frames"] - start["frames"], "seconds": elapsed, "warmup_s": warmup_s, "threads": threads,
        # performance.now() counts from the navigation's start
        "first_frame_s": watched["ready_ms"] / 1e3, "first_frame_wall_s": first_frame_wall_s,
        "chromium": version, "samples": samples,
    }


def run_bench(model: str | None, threads: int, frames: int, out: Path) -> dict:
    """`reverie bench` in its own process (nothing carried over from the browser run), its JSON."""
    argv = [sys.executable, "-m", "reverie_cli", "bench", "--threads", str(threads), "--frames", str(frames),
            "--json", str(out), *(["--model", model] if model else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise WebBenchError(f"reverie bench failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--folder", type=Path, default=None,
                   help="an exported page's folder (reverie export --format web --out DIR) instead of exporting "
                        "--model here")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=2,
                   help="threads of both: the page's onnxruntime-web (?threads=N) and reverie bench (default 2)")
    p.add_argument("--seconds", type=arg_type(check_count(1, 3600), "--seconds", int), default=20,
                   help="measured seconds of the page (default 20)")
    p.add_argument("--warmup", type=arg_type(check_count(0, 600), "--warmup", int), default=5,
                   help="seconds the page runs before it is measured (default 5)")
    p.add_argument("--bench-frames", type=arg_type(check_count(1), "--bench-frames", int), default=600,
                   help="timed frames of reverie bench (default 600)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (folders are made)")
    args = p.parse_args(argv)
    from export.serve import serve_folder
    from export.web import export_web

    try:
        if args.json is not None:
            prepare_output(args.json)       # before the run, not after it
        if args.folder is not None and args.model is not None:
            raise WebBenchError("--folder is an exported page of one model already; leave out --model")
        if args.folder is not None and not (args.folder / "index.html").is_file():
            raise WebBenchError(f"--folder {args.folder}: no index.html; export one with "
                                "reverie export --format web --out DIR")
        with tempfile.TemporaryDirectory(prefix="web-page-") as tmp:
            folder = args.folder
            export_s = None
            if folder is None:
                t0 = time.perf_counter()
                folder = export_web(args.model, Path(tmp) / "web")
                export_s = time.perf_counter() - t0
            load = os.getloadavg()[0]   # other work on the machine shows here: the two halves share no load
            with serve_folder(folder) as url:
                web = measure_page(url, args.threads, args.warmup, args.seconds)
            web["load_avg_1min_before"] = load
            print(f"web    {web['fps']:6.1f} frames/s  p50 {web['p50_ms']:5.2f} ms  p99 {web['p99_ms']:5.2f} ms "
                  f"(max {web['p99_ms_max']:.2f})  first frame {web['first_frame_s']:.2f} s  ({web['backend']}"
                  f"{'' if web['cross_origin_isolated'] else ', NOT cross-origin isolated'}; Chromium "
                  f"{web['chromium']})", flush=True)
            load = os.getloadavg()[0]
            bench = run_bench(args.model, args.threads, args.bench_frames, Path(tmp) / "bench.json")
            bench["load_avg_1min_before"] = load
            print(f"bench  {bench['fps']:6.1f} frames/s  p50 {bench['p50_ms']:5.2f} ms  p99 {bench['p99_ms']:5.2f} ms "
                  f"({bench['backend']}, {bench['machine']['threads']} threads)", flush=True)
            size = folder_mb(folder)
    except ReverieError as e:
        print(f"web_page: error: {e}", file=sys.stderr)
        return 1
    result = {
        "model": args.model, "folder": str(args.folder) if args.folder else None, "folder_mb": size,
        "export_s": export_s, "threads": args.threads,
        "web": web, "bench": bench,
        "ratio_fps": web["fps"] / bench["fps"], "ratio_p50": web["p50_ms"] / bench["p50_ms"],
        "ratio_p99": web["p99_ms"] / bench["p99_ms"],
    }
    print(f"web / bench: {result['ratio_fps']:.2f}x the frames/s, p50 {result['ratio_p50']:.2f}x; page folder "
          f"{size:.1f} MB")
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
