"""Controllers for the KL coefficient beta of the PPO reward (``rewards.shape_rewards``).

Both expose ``.value`` (the beta to use now), ``update(current_kl, n_steps)`` once per rollout, and
``state_dict()`` / ``load_state_dict()`` for resuming. The settings are constructor arguments; only the
evolving value is state.
"""

from __future__ import annotations

from collections.abc import Mapping


class FixedKLController:
    """A constant beta. It has no state: on resume the configured beta is used."""

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op; present so both controllers can be driven the same way."""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Accepts any saved state (even an adaptive controller's) and keeps the configured beta."""


class AdaptiveKLController:
    """Beta that steers the measured KL towards ``target`` (Ziegler et al. 2019, "Fine-Tuning Language
    Models from Human Preferences", sec. 2.2).

    After each rollout: ``error = clip(kl / target - 1, -0.2, 0.2)`` and
    ``beta <- beta * (1 + error * n_steps / horizon)``. The clip bounds how fast beta can move on one noisy
    KL measurement; ``horizon`` (in samples) sets the time scale of the correction.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        problems = []
        if init_beta <= 0:
            problems.append(f"init_beta must be > 0 (a zero beta can never grow), got {init_beta}")
        if target <= 0:
            problems.append(f"target must be > 0, got {target}")
        if horizon <= 0:
            problems.append(f"horizon must be > 0, got {horizon}")
        if problems:
            raise ValueError("; ".join(problems))
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta after a rollout whose mean per-sequence KL was ``current_kl`` over ``n_steps`` samples."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        if "value" not in state:
            raise ValueError(f"AdaptiveKLController state needs 'value', got keys {sorted(state)}")
        self.value = float(state["value"])
