"""Does what an agent learns in the dream hold in the real game? The measurements of docs/research/agents-in-dream.md.

    python3 experiments/agents_in_dream.py --dream-run runs/gems-dream --real-run runs/gems-real \
        --model default --reward engine/assets/default.reward.safetensors --out docs/research/results/agents_gems
    python3 experiments/agents_in_dream.py --env ale:Breakout --model breakout --unit points --real-steps 1000 \
        --dream-steps 250 --dream-starts data/breakout-held --dream-run RUN/checkpoints/agent_000393216.safetensors \
        --real-run REAL/checkpoints/agent_000393216.safetensors --snapshots ... \
        --out docs/research/results/agents_breakout

Scores, with `reverie eval agent` (held-out seeds from 1000000): the dream-trained agent, the random and scripted
agents and PPO trained in the real game on the same number of frames, in the real game (--episodes each); the
dream-trained agent in the dream; and every snapshot of the dream run (checkpoints/) in the dream (--ckpt-dream
episodes) and the real game (--ckpt-real episodes), with the Spearman rank correlation of the two. Writes OUT.json
and OUT.png; every eval's own JSON goes to OUT/ beside them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def evaluate(out: Path, name: str, agent: str, episodes: int, where: list[str]) -> dict:
    path = out / f"{name}.json"
    if not path.exists():
        cmd = ["reverie", "eval", "agent", "--agent", agent, "--episodes", str(episodes), "--json", str(path),
               "--no-progress", "--threads", "2", *where]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(path.read_text())


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dream-run", required=True)
    p.add_argument("--real-run", required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--reward")
    p.add_argument("--env", default="builtin:gems")
    p.add_argument("--out", required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--ckpt-dream", type=int, default=20)
    p.add_argument("--ckpt-real", type=int, default=40)
    p.add_argument("--snapshots", nargs="*", default=None, help="agent files to rank (default: the dream run's "
                   "checkpoints/); any agents, so that the dream is asked to choose between them")
    p.add_argument("--dream-steps", type=int, default=None, help="frames per dream episode (default: the game's)")
    p.add_argument("--real-steps", type=int, default=None, help="cut real episodes off after this many frames "
                   "(default: the game's own end; ale:Breakout's is 27,000 frames for an agent that never serves)")
    p.add_argument("--dream-starts", help="start dream episodes from windows of this recorded play (default: the "
                   "model's built-in start)")
    p.add_argument("--unit", default="gems", help="what the score counts, for the plot (gems, points)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = ["--env", args.env] + (["--episode-steps", str(args.real_steps)] if args.real_steps else [])
    dream = ["--model", args.model] + (["--reward", args.reward] if args.reward else [])
    dream += ["--episode-steps", str(args.dream_steps)] if args.dream_steps else []
    dream += ["--starts", args.dream_starts] if args.dream_starts else []
    result: dict = {"env": args.env, "model": args.model, "unit": args.unit, "real_steps": args.real_steps,
                    "dream_steps": args.dream_steps,
                    "dream_starts": args.dream_starts, "real": {}, "checkpoints": []}
    for name, agent in (("random", "random"), ("scripted", "scripted"), ("dream_agent", args.dream_run),
                        ("real_ppo", args.real_run)):
        r = evaluate(out, f"real_{name}", agent, args.episodes, real)
        result["real"][name] = {"mean": r["mean"], "stderr": r["stderr"], "episodes": r["episodes"],
                                "frames": (r.get("agent_info") or {}).get("frames")}
    d = evaluate(out, "dream_dream_agent", args.dream_run, args.ckpt_dream, dream)
    result["dream_agent_in_dream"] = {"mean": d["mean"], "stderr": d["stderr"], "episodes": d["episodes"]}
    snapshots = args.snapshots or sorted(str(p) for p in (Path(args.dream_run) / "checkpoints").glob("agent_*"))
    for ck in snapshots:
        run = Path(ck).parent.parent if Path(ck).parent.name == "checkpoints" else Path(ck).parent
        name = f"{run.name}_{Path(ck).stem}".replace(".", "_")
        rd = evaluate(out, f"ckpt_{name}_dream", str(ck), args.ckpt_dream, dream)
        rr = evaluate(out, f"ckpt_{name}_real", str(ck), args.ckpt_real, real)
        info = rr.get("agent_info") or {}
        result["checkpoints"].append({"agent": name, "frames": info.get("frames"), "starts": info.get("starts"),
                                      "trained_in": info.get("trained_in"),
                                      "action_repeat": info.get("action_repeat", 1),
                                      "episode_steps": info.get("episode_steps"), "dream": rd["mean"],
                                      "dream_stderr": rd["stderr"], "real": rr["mean"], "real_stderr": rr["stderr"]})
    cks = result["checkpoints"]
    if len(cks) >= 3:
        result["spearman_dream_real"] = spearman([c["dream"] for c in cks], [c["real"] for c in cks])
    rr = result["real"]
    result["ratio_to_real_ppo"] = rr["dream_agent"]["mean"] / max(rr["real_ppo"]["mean"], 1e-9)
    result["ratio_to_scripted"] = rr["dream_agent"]["mean"] / max(rr["scripted"]["mean"], 1e-9)
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(f"{out}.png"))
    print(json.dumps({k: v for k, v in result.items() if k != "checkpoints"}, indent=2))
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ["random", "scripted", "real_ppo", "dream_agent"]
    labels = ["random", "scripted", "PPO in\nreal game", "PPO in\ndream"]
    means = [result["real"][n]["mean"] for n in names]
    errs = [result["real"][n]["stderr"] for n in names]
    a.bar(labels, means, yerr=errs, color=["#888", "#4a8", "#48c", "#c84"], capsize=4)
    a.set_ylabel(f"{result.get('unit', 'gems')} an episode, real game (mean ± s.e.)")
    a.set_title(f"{result['env']}: real-game score ({result['real']['dream_agent']['episodes']} held-out episodes)")
    cks = result["checkpoints"]
    if cks:
        x = [c["dream"] for c in cks]
        y = [c["real"] for c in cks]
        b.errorbar(x, y, xerr=[c["dream_stderr"] for c in cks], yerr=[c["real_stderr"] for c in cks], fmt="o",
                   color="#c84")
        for c in cks:
            label = f"{(c['frames'] or 0) // 1000}k" + (" real" if c.get("trained_in") == "real" else
                                                        "" if c.get("starts") else "*")
            b.annotate(label, (c["dream"], c["real"]), fontsize=8, xytext=(3, 3),
                       textcoords="offset points")
        lim = max(max(x), max(y)) * 1.1 + 0.5
        b.plot([0, lim], [0, lim], ls=":", color="#999")
        rho = result.get("spearman_dream_real")
        b.set_title("agents, dream against real" + (f": Spearman ρ = {rho:.2f}" if rho is not None else ""))
        b.set_xlabel("score in the dream (predicted rewards)")
        b.set_ylabel("score in the real game")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
