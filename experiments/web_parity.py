"""How far the web page's dream stays with the Python session's, frame by frame, and how far two native backends do.

    python experiments/web_parity.py --frames 200 --json docs/research/results/web_parity.json \
        --png docs/research/media/web_parity.png

From the default model's start state, seed and a fixed action script (each direction held 12 frames in turn), it rolls
out the page in headless Chromium (window.reverie.rollout), the Python session on onnxruntime (the same graphs, float32)
and the Python session on torch (eager, float32), and writes per frame: the share of pixels within 1 level and the mean
absolute difference of page against onnxruntime, and of torch against onnxruntime (two native runtimes, the same
model: how much float rounding alone parts a long dream).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def script(frames: int, action_dim: int) -> np.ndarray:
    """Each of the first four buttons held 12 frames in turn (right, left, down, up for builtin:gems)."""
    a = np.zeros((frames, action_dim), np.float32)
    for i in range(frames):
        a[i, (3 - (i // 12) % 4) % action_dim] = 1
    return a


def python_frames(backend: str, actions: np.ndarray, seed: int, graphs: Path | None) -> np.ndarray:
    from engine.runtime import DEFAULT_MODEL
    from engine.session import Session

    s = Session(DEFAULT_MODEL, backend=backend, threads=1, seed=seed, graphs=graphs)
    s.reset()
    return np.stack([s.step(a).copy() for a in actions])


def page_frames(folder: Path, actions: np.ndarray, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    from playwright.sync_api import sync_playwright

    from export.serve import serve_folder

    with serve_folder(folder) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.reverie && window.reverie.ready", timeout=60_000)
        page.evaluate("window.reverie.ready")
        out = page.evaluate("(a) => window.reverie.rollout(a)", {"start": 0, "seed": seed,
                                                                  "actions": actions.tolist()})
        browser.close()
    return np.stack([np.frombuffer(base64.b64decode(f), np.uint8).reshape(shape) for f in out["frames"]])


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, list[float]]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
    return {"within_1": (d <= 1).mean(1).tolist(), "mean_abs": d.mean(1).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from engine.runtime import DEFAULT_MODEL
    from export.onnx import export_onnx
    from export.web import export_web

    with tempfile.TemporaryDirectory() as tmp:
        graphs = export_onnx(DEFAULT_MODEL, Path(tmp) / "graphs")
        folder = export_web(None, Path(tmp) / "site")
        spec = json.loads((folder / "model" / "model.json").read_text())
        actions = script(args.frames, spec["action_dim"])
        ref = python_frames("onnxruntime", actions, args.seed, graphs)
        eager = python_frames("torch", actions, args.seed, None)
        web = page_frames(folder, actions, args.seed, tuple(spec["frame"]))
    result = {"frames": args.frames, "seed": args.seed, "page_vs_onnxruntime": compare(web, ref),
              "torch_vs_onnxruntime": compare(eager, ref)}
    for k in ("page_vs_onnxruntime", "torch_vs_onnxruntime"):
        r = result[k]
        result[k]["first_16_within_1"] = float(np.mean(r["within_1"][:16]))
        result[k]["max_mean_abs"] = float(np.max(r["mean_abs"]))
        print(f"{k}: first 16 frames {100 * r['first_16_within_1']:.3f}% of pixels within 1 level; "
              f"largest per-frame mean |difference| over {args.frames} frames {r['max_mean_abs']:.3f} levels")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    if args.png:
        from train.pictures.images import line_plot

        line_plot(args.png, {"page vs onnxruntime": result["page_vs_onnxruntime"]["mean_abs"],
                             "torch vs onnxruntime": result["torch_vs_onnxruntime"]["mean_abs"]},
                  title="mean |difference| per frame, levels of 255 (default model, seed 0)", xlabel="frame")


if __name__ == "__main__":
    main()
