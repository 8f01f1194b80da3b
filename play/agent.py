"""`reverie play --agent AGENT`: an agent plays inside the dream while the player watches.

An `AgentWorld` is the model's world (play.world.ModelWorld) whose actions come from an agent (train.agents.policy)
instead of the keys: its `take()` is the window worker's action source, the agent acting on the newest dream frame.
Beside it (Tab), the real game the dream was started from goes on from the dream's last start frame, played by a
second copy of the same agent from the real game's own frames. On every reset both copies are seeded with the
episode's seed, so the two halves show one agent in the dream and in the game the dream imitates.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from play.world import ModelWorld, Step
from train.agents.policy import AGENT_FILE, AgentPolicy, check_fits, load_agent


def load_fitting_agent(name_or_path: str, ckpt: Any, where: str) -> AgentPolicy:
    """The agent by name, run folder or file, checked against the checkpoint's actions and frame size; AgentError
    (one line) for a missing file or an agent of another game, action set or frame size."""
    agent = load_agent(name_or_path)
    frame_shape = (ckpt.config.autoencoder.height, ckpt.config.autoencoder.width, 3)
    check_fits(agent, ckpt.action_spec, frame_shape, where)
    return agent


def agent_label(name_or_path: str) -> str:
    """A short name for the HUD and recording file names: a shipped agent's name, a run folder's name, or an agent
    file's stem (its folder's name for a run's agent.safetensors)."""
    p = Path(name_or_path)
    if p.is_dir() or p.suffix != ".safetensors":
        label = p.name
    else:
        label = p.parent.name if p.name == AGENT_FILE and p.parent.name else p.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "agent"


def twin_agent(agent: AgentPolicy) -> AgentPolicy:
    """A second agent over the same (read-only) policy network with its own random generator."""
    return AgentPolicy(agent.policy, agent.spec, agent.frame_shape, agent.info, agent.path)


class AgentWorld(ModelWorld):
    """The model's world played by an agent; the real game beside it played by a copy of that agent."""

    def __init__(self, session: Any, agent: AgentPolicy, name: str, env_id: str | None = None, seed: int = 0,
                 backend: str = "torch"):
        super().__init__(session, env_id=env_id, seed=seed, backend=backend)
        self.agent_name = name                     # what the HUD, the recorder and the JSON call the agent
        self.dream_agent = agent
        self.real_agent = twin_agent(agent)
        self.real_score = 0.0                      # the real game's reward summed over its running episode
        self._dream_frame: np.ndarray | None = None   # (H, W, 3) uint8: what each agent acts on next
        self._real_frame: np.ndarray | None = None

    def reset(self) -> Step:
        """Both worlds from the same start of the real game, both agents seeded with that start's seed."""
        step = super().reset()             # the real game now stands at the dream's last start frame
        self.episode_seed = self.seed + self.resets - 1
        self.dream_agent.reset(self.episode_seed)
        self.real_agent.reset(self.episode_seed)
        self._dream_frame, self._real_frame = step.frame, step.twin
        self.real_score = 0.0
        return step

    def take(self) -> tuple[np.ndarray, float]:
        """The dream's next action (the agent's, from the newest dream frame) and when it was chosen; the worker
        calls this instead of reading the keys."""
        return self.dream_agent.act(self._dream_frame), time.perf_counter()

    def step(self, action: np.ndarray) -> Step:
        """The dream with `action` (the agent's, from take()); the real game with the twin agent's own action."""
        frame = self.session.step(action, defer_update=True).copy()   # (H, W, 3); the next step reuses the buffer
        self._dream_frame = frame
        return Step(frame, self._real_step())

    def _real_step(self) -> np.ndarray | None:
        """One step of the real game played by the twin agent; a finished episode starts the next one."""
        if self.game is None:
            return None
        if getattr(self.game, "done", False):
            self._real_frame = self.game.reset(None)
            self.real_score = 0.0
        frame, _ = self.game.step(self.real_agent.act(self._real_frame))
        self.real_score += float(getattr(self.game, "reward", 0.0))
        self._real_frame = frame
        return frame

    def load(self, path: Path) -> Step:
        """A save-game as ModelWorld loads it; the agents go on from the restored frames."""
        step = super().load(path)
        self._dream_frame = step.frame
        if step.twin is not None:
            self._real_frame = step.twin
        return step
