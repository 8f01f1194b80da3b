"""Agents that act from frames: a policy trained by `reverie train agent` (in the dream or in the real game), its file,
and the agents the commands take by name.

An agent file (RUN/agent.safetensors, a Reverie checkpoint of kind "agent") holds the policy's weights (part "agent")
and, in its metadata, the game and action spec it acts for, the observation it reads and how it was trained (in which
world, on how many frames). The policy is stable-baselines3's actor-critic CNN (the Nature DQN encoder of Mnih et al.
2015), rebuilt from that metadata on load, so no pickle is read: SB3's own zip format stores spaces with cloudpickle.

    agent = load_agent("runs/agent/agent.safetensors")        # or a shipped agent by name: load_agent("gems")
    agent.reset(seed=0)
    action = agent.act(frame)                                  # (H, W, 3) uint8 -> the ActionSpec's float32 vector

Actions are sampled from the policy (seeded by reset), not its most likely choice: a policy over independent buttons
that always takes the likeliest can freeze where two choices tie, and PPO trained it to act by sampling.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from engine.actions import ActionSpec
from engine.checkpoint import SHIPPED, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from engine.config import ModelConfig

AGENT_FILE = "agent.safetensors"      # what `reverie train agent --out RUN` writes in RUN
SHIPPED_AGENTS = {"gems": "builtin:gems"}   # engine/assets/<name>.agent.safetensors, and the game it plays
FEATURES_DIM = 256                     # width of the encoder's output (SB3's NatureCNN default is 512)


class AgentError(CheckpointError):
    """An agent file that cannot be used, or an agent that does not fit a game; says which and what to do."""


def require_sb3() -> None:
    """stable-baselines3 is the `agents` extra; a one-line error when it is missing."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise AgentError("agents need stable-baselines3: pip install 'reverie[agents]' (or pip install "
                         "stable-baselines3)") from None


MIN_SIDE = 36                          # the Nature CNN's 8/4, 4/2, 3/1 convolutions need frames at least this big


def observation_space(frame_shape: tuple[int, ...]) -> spaces.Box:
    """The policy's observation: one frame, channels first (as SB3's CNN policies take images)."""
    h, w, c = frame_shape
    if min(h, w) < MIN_SIDE:
        raise AgentError(f"frames of {h}x{w}: an agent's CNN needs frames of at least {MIN_SIDE}x{MIN_SIDE}; train the "
                         "world model (or play the game) at a larger --size")
    return spaces.Box(0, 255, (c, h, w), np.uint8)


def action_space(spec: ActionSpec) -> spaces.Space:
    """MultiBinary over the game's buttons; games with axes are not supported yet (one-line error)."""
    if spec.axes:
        raise AgentError(f"game {spec.game!r} has axes ({', '.join(spec.axes)}); agents act on games with buttons "
                         "only so far")
    return spaces.MultiBinary(len(spec.buttons))


def channels_first(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 frames -> (..., 3, H, W), contiguous."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(frames, dtype=np.uint8), -1, -3))


ALIASES = ("pi_features_extractor.", "vf_features_extractor.")   # names SB3 gives the one shared encoder again


@functools.cache
def policy_class():
    """SB3's ActorCriticCnnPolicy whose state dict holds the shared encoder once: SB3 registers it under three names,
    and safetensors (rightly) refuses to write one tensor three times."""
    require_sb3()
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    class AgentCnnPolicy(ActorCriticCnnPolicy):
        def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            sd = super().state_dict(*args, **kwargs)
            return {k: v for k, v in sd.items() if not k.startswith(ALIASES)}

        def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
            full = dict(state_dict)
            for k, v in state_dict.items():
                if k.startswith("features_extractor."):
                    for alias in ALIASES:
                        full.setdefault(alias + k.removeprefix("features_extractor."), v)
            return super().load_state_dict(full, strict=strict, assign=assign)

    return AgentCnnPolicy


def build_policy(frame_shape: tuple[int, ...], spec: ActionSpec, lr: float = 2.5e-4):
    """A fresh policy (policy_class()) for frames of `frame_shape` and the game's buttons."""
    return policy_class()(observation_space(frame_shape), action_space(spec), lambda _: lr,
                          features_extractor_kwargs={"features_dim": FEATURES_DIM})


def save_agent(path: str | os.PathLike, policy: torch.nn.Module, spec: ActionSpec, frame_shape: tuple[int, ...],
               info: dict[str, Any]) -> Path:
    """Write the policy's weights and what it acts for (atomically); `info` says how it was trained."""
    return save_checkpoint(path, kind="agent", config=ModelConfig(), action_spec=spec,
                           parts={"agent": policy.state_dict()},
                           data={"frame_shape": list(frame_shape)}, extra={"policy": "ActorCriticCnnPolicy",
                                                                            "features_dim": FEATURES_DIM, **info})


def resolve_agent(name_or_path: str | os.PathLike) -> Path:
    """A shipped agent's name ("gems"), a run folder (its agent.safetensors) or an agent file."""
    p = Path(name_or_path)
    if str(name_or_path) in SHIPPED_AGENTS and not p.exists():
        return SHIPPED / f"{name_or_path}.agent.safetensors"
    if p.is_dir():
        return p / AGENT_FILE
    return p


class AgentPolicy:
    """A trained policy as a train.games.base.Agent: reset(seed), act(frame) -> action vector.

    An agent trained with an action repeat k (info["action_repeat"]) chooses every k frames and holds its choice in
    between, as it did in training; act_batch keeps one hold per row (forget(i) when row i's episode starts again)."""

    def __init__(self, policy: torch.nn.Module, spec: ActionSpec, frame_shape: tuple[int, ...],
                 info: dict[str, Any], path: Path | None = None):
        self.policy, self.spec, self.frame_shape, self.info, self.path = policy.eval(), spec, frame_shape, info, path
        self.repeat = max(1, int(info.get("action_repeat", 1)))
        self.generator = torch.Generator().manual_seed(0)
        self._held: np.ndarray | None = None      # (B, A) the actions held
        self._left = np.zeros(0, np.int64)         # (B,) frames each row still holds its action

    @property
    def game(self) -> str:
        return self.spec.game

    def reset(self, seed: int | None = None) -> None:
        self.generator.manual_seed(0 if seed is None else int(seed) % 2**63)
        self._held, self._left = None, np.zeros(0, np.int64)

    def forget(self, row: int) -> None:
        """Row `row` starts a new episode: it chooses afresh at its next frame."""
        if row < len(self._left):
            self._left[row] = 0

    @torch.no_grad()
    def sample(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, A) float32 action vectors, sampled from the policy (no hold)."""
        frames = np.asarray(frames)
        if frames.shape[1:] != tuple(self.frame_shape):
            raise AgentError(f"agent {self.path}: acts on frames of shape {tuple(self.frame_shape)}, got "
                             f"{frames.shape[1:]}; play the game at the size the agent was trained on")
        obs = torch.from_numpy(channels_first(frames))
        probs = self.policy.get_distribution(obs).distribution.probs     # (B, A) Bernoulli; SB3 scales uint8 images
        u = torch.rand(probs.shape, generator=self.generator)
        return (u < probs).float().numpy()

    def act_batch(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, A) float32: a fresh choice for the rows whose hold ran out, the held one else."""
        frames = np.asarray(frames)
        if self._held is None or len(self._held) != len(frames):
            self._held = np.zeros((len(frames), self.spec.size), np.float32)
            self._left = np.zeros(len(frames), np.int64)
        choose = self._left <= 0
        if choose.any():
            self._held[choose] = self.sample(frames)[choose]
        self._left[choose] = self.repeat
        self._left -= 1
        return self._held.copy()

    def act(self, frame: np.ndarray) -> np.ndarray:
        return self.act_batch(np.asarray(frame)[None])[0]


def load_agent(name_or_path: str | os.PathLike, device: str = "cpu") -> AgentPolicy:
    """An agent file, a run folder or a shipped agent's name -> AgentPolicy; AgentError saying what is wrong."""
    path = resolve_agent(name_or_path)
    if not path.exists():
        shipped = ", ".join(SHIPPED_AGENTS)
        raise AgentError(f"--agent {name_or_path}: no such agent file or run folder (train one with 'reverie train "
                         f"agent --out RUN'; shipped agents: {shipped}; baselines: random, scripted)")
    ckpt = load_checkpoint(path, device)
    return agent_from_checkpoint(ckpt)


def agent_from_checkpoint(ckpt: Checkpoint) -> AgentPolicy:
    if ckpt.kind != "agent" or not ckpt.has("agent"):
        raise AgentError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint, not an agent; pass the agent.safetensors that "
                         "'reverie train agent' wrote (or its run folder)")
    shape = tuple(int(x) for x in ckpt.data.get("frame_shape", ()))
    if len(shape) != 3 or shape[-1] != 3:
        raise AgentError(f"{ckpt.path}: bad frame_shape {shape} in the agent's metadata")
    policy = build_policy(shape, ckpt.action_spec)
    try:
        policy.load_state_dict(ckpt.tensors["agent"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise AgentError(f"{ckpt.path}: the agent's weights do not fit its policy ({first})") from None
    return AgentPolicy(policy, ckpt.action_spec, shape, dict(ckpt.extra), ckpt.path)


def check_fits(agent: AgentPolicy, spec: ActionSpec, frame_shape: tuple[int, ...], where: str) -> None:
    """An agent trained on another game, action set or frame size is a one-line error naming both."""
    if agent.spec.game != spec.game:
        raise AgentError(f"agent {agent.path} was trained on {agent.spec.game!r}, not {spec.game!r} ({where}); "
                         f"train an agent for {spec.game!r} with 'reverie train agent'")
    if agent.spec.to_dict() != spec.to_dict():
        raise AgentError(f"agent {agent.path} acts with the buttons {list(agent.spec.buttons)} of action spec "
                         f"version {agent.spec.version}, but {where} takes {list(spec.buttons)} (version "
                         f"{spec.version}); train an agent for this action set")
    if tuple(frame_shape) != tuple(agent.frame_shape):
        raise AgentError(f"agent {agent.path} acts on {agent.frame_shape[0]}x{agent.frame_shape[1]} frames, "
                         f"{where} gives {frame_shape[0]}x{frame_shape[1]}; use --size {agent.frame_shape[0]}")
