"""The reverie command line called in-process by the tests, with torch seeded first (the CLI builds its models before
it seeds; see test_training.test_cli_seed_sets_initial_weights)."""

from __future__ import annotations

import torch

import reverie_cli


def cli(*argv, seed_torch: bool = True) -> int:
    """Run `reverie ARGV...` in this process and return its exit code; arguments may be paths or numbers."""
    if seed_torch:
        torch.manual_seed(0)
    return reverie_cli.main([str(a) for a in argv])
