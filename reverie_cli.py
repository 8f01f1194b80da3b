"""The `reverie` command: a small dispatcher that imports a sub-command's package only when it runs."""

from __future__ import annotations

import importlib
import os
import sys

# numpy's OpenBLAS starts a spinning thread per core for every small matrix product (frame resizing, probes), and two
# such processes side by side (two evals, or one beside training) fight over the cores: a Breakout eval that replays
# the real game ran 3x slower beside another. torch keeps its own threads (--threads), so one BLAS thread is enough.
# Set before any sub-command imports numpy; a value the user exported wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

EXIT_READER_LEFT = 128 + 13   # the shell's status of a command killed by SIGPIPE (13), e.g. `cat big | head -1`

# name -> (module with main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("play.cli", "play inside a world model in a pygame window (default: the shipped model)"),
    "record": ("train.data.record", "record episodes of play from a game into episode files"),
    "data": ("train.data.cli", "inspect, verify, import (video + input log) and label episode files "
                               "(info, check, import, label)"),
    "train": ("train.training.cli", "train the autoencoder (ae), world model (wm) or inverse-dynamics model (idm)"),
    "eval": ("train.evaluation.evaluate", "score a checkpoint on held-out episodes (PSNR, SSIM, action following)"),
    "bench": ("play.bench", "measure frames/s and frame times of the real-time session"),
    "serve": ("play.serve_cli", "serve worlds to many clients over WebSocket, one batch per tick (docs/SERVE.md)"),
    "export": ("export.cli", "write a model's real-time step as ONNX graphs, TensorRT engines or a web page"),
}

# (command, sub-command) -> module with main(argv) -> int: a sub-command that lives in another package than its command
# (`reverie eval agent` plays agents, a room above train.evaluation that evaluate.py may not import)
SUBCOMMANDS: dict[tuple[str, str], str] = {("eval", "agent"): "train.agents.eval_agent"}


def command_parser(name: str):
    """The argparse parser of command `name` (its module's build_parser()): what a recipe checks an eval stage's
    settings against, without depending on the command's package (train/training/recipe.py runs it by name)."""
    return importlib.import_module(COMMANDS[name][0]).build_parser()


def usage() -> str:
    lines = ["usage: reverie <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {helptext}" for name, (_, helptext) in COMMANDS.items()]
    lines += ["", "Run 'reverie <command> --help' for a command's options."]
    return "\n".join(lines)


def _reader_left() -> int:
    """End quietly once stdout's reader has gone (`reverie data info --json DIR | head -1`), as `cat` does.

    Python's advice (the signal module's note on SIGPIPE): point stdout at devnull, so that flushing it at exit raises
    no second error; the status is that of a command killed by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # stdout is no file (a test's capture): there is nothing left to flush into
        pass
    return EXIT_READER_LEFT


def main(argv: list[str] | None = None) -> int:
    """Run `reverie ARGV...` and return its exit status."""
    try:
        try:
            return _dispatch(argv)
        finally:   # a reader that left shows here (after --help's SystemExit too), where it can still be caught
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"reverie {version('reverie')}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"reverie: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from engine.errors import ReverieError

    target = COMMANDS[name][0]
    if len(argv) > 1 and (name, argv[1]) in SUBCOMMANDS:   # `reverie eval agent ...`: the sub-command's own module
        target = SUBCOMMANDS[(name, argv[1])]
        name, argv = f"{name} {argv[1]}", argv[1:]
    module = importlib.import_module(target)
    try:
        return int(module.main(argv[1:]) or 0)
    except ReverieError as e:  # a user's bad input or an impossible request: one line, no traceback
        print(f"reverie {name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        if not e.args:   # an interrupt that said nothing yet (training says what it saved itself)
            print("reverie: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
