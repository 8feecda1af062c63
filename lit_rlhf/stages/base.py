"""StageModule: what every training stage (SFT, reward model, PPO) shares.

A stage has a name (``STAGE``: its run-directory folder and metric namespace), a parent stage directory it starts
from (``parent_dir``; None for SFT from a bare backbone), a tokenizer and prompt format loaded before any weights
(the data module needs them first), a target device, a non-finite update guard whose counters live in checkpoints,
an optimizer config, and at the end of fit a stage directory written once to ``<run dir>/stage``
(``stage_dir_written``). The CLI and the run-status callback (lit_rlhf.runs.RunStatus) read these typed
attributes, and ``status_fields`` for what a stage adds to status.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from lit_rlhf.runs import run_dir
from lit_rlhf.stages.common import (
    OptimConfig,
    StrategyCheck,
    build_optimizer,
    gradient_vote,
    stage_text_format,
)
from lit_rlhf.stages.guards import NumericalGuard

# The checkpoint key of the guard's counters (SFT and reward; PPO keeps them in its own state block).
GUARD_KEY = "lit_rlhf_guard"


class StageModule(StrategyCheck, L.LightningModule):
    """Base of the stage modules.

    Args:
        parent_dir: The stage directory this stage starts from (recorded as the stage directory's parent).
        optim: Optimizer settings.
        max_nonfinite_updates: Stop after this many non-finite (skipped) updates in a row (0 = never).

    Subclasses set ``STAGE`` and build their backbone into ``self.net`` in ``configure_model`` (``trained_net``
    and ``built_text_format`` read it); a stage that builds something else (PPO's roles) overrides both.
    """

    STAGE: ClassVar[str] = "stage"

    def __init__(self, parent_dir: str | None, optim: OptimConfig, max_nonfinite_updates: int) -> None:
        super().__init__()
        self.parent_dir = parent_dir
        self.optim_cfg = optim
        self.guard = NumericalGuard(self.STAGE, max_nonfinite_updates)
        self.stage_dir_written: Path | None = None
        self.net: Any = None  # the backbone a stage builds in configure_model (PPO builds roles instead)
        self._tokenizer = None  # the text format loaded before the model (see text_format)
        # Fields the stage adds to the run's status.json (e.g. PPO's alarms and best kept policy); RunStatus writes
        # a change at the end of that batch. Replace the dict, never mutate it, so the change is seen.
        self.status_fields: dict[str, Any] = {}

    # ---- tokenizer and device -------------------------------------------------------------------------
    def built_text_format(self) -> Any | None:
        """The built model's text format, or None before ``configure_model``."""
        return self.net.text_format if self.net is not None else None

    def load_text_format(self) -> Any:
        """The text format without loading weights: by default the parent stage directory's."""
        return stage_text_format(self.parent_dir)

    @property
    def text_format(self):
        """Tokenizer + prompt format: the built model's, else loaded once without weights (the data module needs it
        before ``configure_model``)."""
        built = self.built_text_format()
        if built is not None:
            return built
        if self._tokenizer is None:
            self._tokenizer = self.load_text_format()
        return self._tokenizer

    @property
    def tokenizer(self):
        return self.text_format.tokenizer

    def _target_device(self) -> torch.device:
        # inside configure_model self.device can still be cpu; the strategy knows where the model will live
        return self.trainer.strategy.root_device if self._trainer is not None else self.device

    # ---- optimization and the guard -------------------------------------------------------------------
    @property
    def trained_net(self) -> Any:
        """The backbone being trained (its parameters are checked by the guard and saved in the stage dir)."""
        return self.net

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches)
        opt, sched = build_optimizer(list(self.trained_net.named_parameters()), self.optim_cfg, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self.automatic_optimization:
            return  # manual optimization (PPO) checks its gradients itself, before clipping
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not self.guard.grads_ok(params, self.global_step, gradient_vote(self.trainer, self.trained_net)):
            self.log(f"{self.STAGE}/skipped_updates", float(self.guard.skipped), on_step=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[GUARD_KEY] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.load_state_dict(checkpoint.get(GUARD_KEY, {}))

    # ---- the stage directory ----------------------------------------------------------------------------
    def gathered_state(self, net: Any) -> dict[str, torch.Tensor] | None:
        """The full state of a sharded (FSDP2) `net`, None when it is whole. A collective: every rank calls it,
        before any rank-zero check."""
        if not net.sharded:
            return None
        from lit_rlhf.distributed import full_state

        return full_state(net)

    def write_stage_dir(
        self, out: Path, net: Any, state: dict[str, torch.Tensor] | None, **manifest: Any
    ) -> None:
        """`net` as a stage directory of this stage at `out`, atomically (rank zero): step, parent and the run's
        config recorded; `manifest` passes the stage's own fields (metrics, adapters, heads, extra, ...)."""
        from lit_rlhf.checkpoint.stage_dir import save_stage_dir

        config = run_dir(self.trainer) / "config.yaml"
        save_stage_dir(
            out,
            net,
            stage=self.STAGE,
            step=self.global_step,
            parent=str(self.parent_dir) if self.parent_dir is not None else None,
            config_text=config.read_text() if config.is_file() else None,
            state=state,
            **manifest,
        )

    def export_stage_dir(self, net: Any, state: dict[str, torch.Tensor] | None, **manifest: Any) -> Path:
        """The end of fit (rank zero): write ``<run dir>/stage`` once and record it in ``stage_dir_written``."""
        out = run_dir(self.trainer) / "stage"
        self.write_stage_dir(out, net, state, **manifest)
        self.stage_dir_written = out
        return out
