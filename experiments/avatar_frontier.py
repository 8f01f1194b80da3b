"""Every measured way of keeping builtin:gems' avatar on screen, on one picture: avatar presence against extra copies.

Reads a results file that lists arms measured by `reverie eval --horizon 1000` (1 step, guidance 1.75, the 8
held-out episodes from seed 9,100,000): per arm, the share of dream frames that show the avatar (`avatar_visible`,
the real game's is 1.00) and the share that show more avatars than the real frame (`more_than_real`), with the
lever it tried (`group`) and the file its numbers come from (`source`). Draws them as a labelled scatter with the
issue's bar (0.95) and the shipped model's copies as reference lines, and prints the arms that no other arm beats
on both axes (the frontier).

    python3 experiments/avatar_frontier.py --json docs/research/results/avatar_frontier_2026-12-03.json \
        --png docs/research/media/avatar_frontier.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import ReverieError
from train.pictures.images import scatter_plot


def frontier(arms: list[dict]) -> list[str]:
    """Names of the arms no other arm beats on both axes (more avatar presence and fewer extra copies)."""
    def beaten(a: dict) -> bool:
        return any(b is not a and b["avatar_visible"] >= a["avatar_visible"]
                   and b["more_than_real"] <= a["more_than_real"]
                   and (b["avatar_visible"], b["more_than_real"]) != (a["avatar_visible"], a["more_than_real"])
                   for b in arms)
    return [a["name"] for a in arms if not beaten(a)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="the results file listing the arms")
    p.add_argument("--png", required=True, help="where to draw the picture")
    args = p.parse_args(argv)
    try:
        try:
            spec = json.loads(Path(args.json).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReverieError(f"--json {args.json}: cannot read it ({e})") from None
        arms = spec.get("arms")
        need = ("name", "avatar_visible", "more_than_real", "group")
        if not isinstance(arms, list) or not arms or any(not isinstance(a, dict) or any(k not in a for k in need)
                                                         for a in arms):
            raise ReverieError(f"--json {args.json}: needs an 'arms' list whose entries have {', '.join(need)}")
        groups = list(dict.fromkeys(a["group"] for a in arms))
        points = [(a["more_than_real"], a["avatar_visible"], a["name"], groups.index(a["group"])) for a in arms]
        scatter_plot(args.png, points, groups=groups,
                     xlabel="share of dream frames with more avatars than the real frame (real game: 0)",
                     ylabel="avatar visible, share of 1,000 dreamed frames (real game: 1.00)", size=(1000, 720),
                     ylines={"the issue's bar 0.95": 0.95},
                     xlines={"shipped": spec.get("shipped_more_than_real", 0.16)})
        best = frontier(arms)
        for a in sorted(arms, key=lambda a: a["more_than_real"]):
            mark = "*" if a["name"] in best else " "
            print(f"{mark} {a['name']:<28} avatar {a['avatar_visible']:.2f}  more than real {a['more_than_real']:.0%}"
                  f"  [{a['group']}]")
        print(f"* the frontier: no other arm shows the avatar more often with fewer copies; picture: {args.png}")
    except ReverieError as e:
        print(f"avatar_frontier: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
