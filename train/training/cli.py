"""`reverie train --recipe NAME` (every stage of a recipe, train/training/recipe.py) and `reverie train ae|wm|idm|merge`
(one stage, for experts): registers the stages; each stage module owns its flags and its run.

A stage module (train.training.ae, train.training.wm, train.training.idm) has HELP, add_flags(parser) and run(args);
the shared flags and the configuration they build live in train.training.config. Stages never import this module.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.errors import ReverieError

STAGES = {"ae": "train.training.ae", "wm": "train.training.wm", "idm": "train.training.idm",
          "merge": "train.training.merge", "reward": "train.training.reward",
          "agent": "train.agents.train_agent"}
USAGE = """reverie train --recipe NAME --data DIR --out RUN [--set [STAGE.]KEY=VALUE ...] [--dry-run]
       reverie train {ae,idm,wm,merge,reward,agent} ... one stage (for experts; see 'reverie train STAGE --help')"""


def parser() -> argparse.ArgumentParser:
    """The `reverie train STAGE` parser: one sub-command per stage, with the stage's own flags."""
    p = argparse.ArgumentParser(prog="reverie train", usage=USAGE, description="Train a world model: every stage "
                                "of a recipe with --recipe, or one stage.")
    sub = p.add_subparsers(dest="stage", required=True)
    for name, module in STAGES.items():
        stage = importlib.import_module(module)
        stage.add_flags(sub.add_parser(name, help=stage.HELP))
    return p


def recipe_parser() -> argparse.ArgumentParser:
    """The `reverie train --recipe` parser."""
    from train.training import recipe

    p = argparse.ArgumentParser(prog="reverie train", usage=USAGE, description=recipe.__doc__.split("\n")[0],
                                epilog="recipes:\n" + "\n".join(f"  {k:<10} {v}" for k, v in
                                                                  recipe.available().items()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe.add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, run the recipe or the stage, print a Reverie error as one line; leave the process group at the end."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:   # --recipe, or --help: the recipe command (the stages are listed)
        if not argv or argv[0] in ("-h", "--help"):
            recipe_parser().print_help()
            print("\nstages (one at a time, for experts):")
            for name, module in STAGES.items():
                print(f"  {name:<10} {importlib.import_module(module).HELP}")
            return 0
        from train.training import recipe

        args = recipe_parser().parse_args(argv)
        try:
            return recipe.run(args)
        except ReverieError as e:
            print(f"reverie train --recipe: error: {e}", file=sys.stderr)
            return 1
    args = parser().parse_args(argv)
    from train.training.distributed import finish_distributed

    ok = False
    try:
        rc = int(importlib.import_module(STAGES[args.stage]).run(args) or 0)
        ok = rc == 0
    except ReverieError as e:  # said here (not by the dispatcher) so that a torchrun worker still ends below
        print(f"reverie train {args.stage}: error: {e}", file=sys.stderr)
        rc = 1
    finally:  # an uncaught error leaves the group too (without waiting for the other ranks) and propagates
        joined = finish_distributed(ok)
    if joined:
        # a torchrun worker whose files are all written ends here: the C++ teardown of the collective backend at
        # interpreter exit can abort a rank that has finished its work (seen with gloo + FSDP2)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc
