"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, save a whole state, say so, exit 130 or 143.

While fit() runs its steps, StopSignals holds both signals: the handler only notes the signal, so neither can land
in the middle of an optimizer step or of a state being written, and a second Ctrl-C (or torchrun passing the
terminal's Ctrl-C on to its workers, which then see it twice) changes nothing. At the next step boundary every rank
asks `agreed()`; under torchrun that is a collective, so all ranks stop after the same step, save one state together
and leave, where one rank stopping alone would leave the others waiting in their next all-reduce. Then `stop()`
raises: KeyboardInterrupt for SIGINT (what Python code around fit() expects; `reverie` exits 130) and
SystemExit(143) for SIGTERM (128 + the signal, what a shell, torchrun or a recipe runner reads as "terminated").

A signal the process was told to ignore (SIG_IGN: `nohup`, a background job of a script) stays ignored. Off the
main thread Python cannot install handlers; there a Ctrl-C arrives as a KeyboardInterrupt in the middle of a step,
which fit() handles as well as it can (see train.training.loop).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from train.training.distributed import Dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNAL_EXIT_BASE = 128      # a process ended by signal N exits with 128 + N, as a shell reports it


class StopSignals:
    """Hold SIGINT and SIGTERM while a training loop runs (a context manager); `agreed()` at a step boundary says
    whether to stop, `stop()` ends the run."""

    def __init__(self, dist_info: Dist):
        self.dist_info = dist_info
        self.signum: int | None = None       # the first signal caught
        self.acted = False                   # the run stopped for it
        self.previous: dict[int, object] = {}
        self.group = None                    # the process group the ranks agree over (set on entry under torchrun)

    def __enter__(self) -> StopSignals:
        if self.dist_info.world > 1 and dist.get_backend() != "gloo":
            # NCCL would make every rank wait for its GPU to read the flag back: agree over CPU (gloo) instead
            self.group = dist.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                old = signal.getsignal(sig)
                if old in (signal.SIG_IGN, None):   # ignored on purpose (or set outside Python): keep it so
                    continue
                self.previous[sig] = old
                signal.signal(sig, self._note)
        return self

    def __exit__(self, kind: type | None, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}
        if self.signum is not None and not self.acted and kind is None:
            signal.raise_signal(self.signum)  # came after the last step boundary: what it would have done unheld

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def agreed(self) -> int | None:
        """The signal to stop for, or None to go on; a collective under torchrun (every rank must ask, at the same
        step), where any rank's signal stops all (SIGTERM over SIGINT)."""
        if self.dist_info.world <= 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag) or None

    @staticmethod
    def stop(signum: int, message: str) -> None:
        """End the run after its state is saved: KeyboardInterrupt for SIGINT, SystemExit(128 + N) for the rest."""
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(message)
        raise SystemExit(SIGNAL_EXIT_BASE + signum)


def signal_name(signum: int) -> str:
    """SIGINT -> 'Ctrl-C (SIGINT)', SIGTERM -> 'SIGTERM'."""
    name = signal.Signals(signum).name
    return f"Ctrl-C ({name})" if signum == signal.SIGINT else name
