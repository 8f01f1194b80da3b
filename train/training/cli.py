"""`reverie train ae|wm|idm`: registers the training stages; each stage module owns its flags and its run.

A stage module (train.training.ae, train.training.wm, train.training.idm) has HELP, add_flags(parser) and run(args);
the shared flags and the configuration they build live in train.training.config. Stages never import this module.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.errors import ReverieError

STAGES = {"ae": "train.training.ae", "wm": "train.training.wm", "idm": "train.training.idm"}


def parser() -> argparse.ArgumentParser:
    """The `reverie train` parser: one sub-command per stage, with the stage's own flags."""
    p = argparse.ArgumentParser(prog="reverie train", description="Train a stage of the world model.")
    sub = p.add_subparsers(dest="stage", required=True)
    for name, module in STAGES.items():
        stage = importlib.import_module(module)
        stage.add_flags(sub.add_parser(name, help=stage.HELP))
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, run the stage, print a Reverie error as one line; leave the process group at the end."""
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
