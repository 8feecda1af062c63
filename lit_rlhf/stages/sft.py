"""SFTModule: supervised fine-tuning on demonstrations, loss on response tokens only (InstructGPT step 1)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics import MeanMetric

from lit_rlhf.backbone.config import BackboneConfig, Quantization, coerce_backbone
from lit_rlhf.backbone.generate import SamplingConfig, generate_batches
from lit_rlhf.data.formatting import PromptFormat, PromptSpec, prompt_to_json
from lit_rlhf.evaluation.metrics import judge_metrics
from lit_rlhf.judges import judge_item, load_judge
from lit_rlhf.rl.losses import lm_loss_at_targets, target_positions
from lit_rlhf.run_files import SAMPLES
from lit_rlhf.runs import log_rows
from lit_rlhf.stages.base import StageModule
from lit_rlhf.stages.common import (
    OptimConfig,
    SampleConfig,
    computes_on_this_rank,
    read_prompts,
    run_validation,
    shard_if_fsdp2,
    stage_text_format,
)


@dataclass
class _SFTState:
    """What the module tracks between steps (not config)."""

    last_time: float = 0.0
    last_sample_step: int = -1
    last_val_step: int | None = None
    sample_prompts: list[PromptSpec] = field(default_factory=list)
    sample_references: list[str | None] = field(default_factory=list)


class SFTModule(StageModule):
    """Fine-tune the policy on demonstrations; writes an ``sft`` stage directory at the end of fit.

    Args:
        backbone: How to build the model (ignored when ``init_from`` is set).
        init_from: A stage directory to continue from (its policy adapter or full weights).
        quantization: Quantize the frozen base (``8bit``/``4bit``; needs LoRA), spelled as in the reward and PPO
            stages. Default: ``backbone.quantization``, or as the ``init_from`` stage stored it.
        optim: AdamW + warmup/cosine settings.
        samples: Completions logged during training and the held-out evaluation at the end.
        max_nonfinite_updates: Stop after this many non-finite (skipped) updates in a row (0 = never).
        prompt_format: How prompts are rendered (the tokenizer's chat template or plain text, and a system
            prompt). Recorded in the stage directory: every later stage renders prompts the same way. Default:
            ``template: auto``, or the ``init_from`` stage's own format.
    """

    STAGE = "sft"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        init_from: str | None = None,
        quantization: Quantization | None = None,
        optim: OptimConfig | None = None,
        samples: SampleConfig | None = None,
        max_nonfinite_updates: int = 10,
        prompt_format: PromptFormat | None = None,
    ) -> None:
        super().__init__(init_from, optim or OptimConfig(), max_nonfinite_updates)
        if backbone is None and init_from is None:
            raise ValueError("SFTModule needs backbone (a model to build) or init_from (a stage directory)")
        self.backbone_cfg = coerce_backbone(backbone) if backbone is not None else None
        if quantization is not None and self.backbone_cfg is not None and init_from is None:
            if self.backbone_cfg.quantization not in ("none", quantization):
                raise ValueError(
                    f"quantization={quantization} contradicts backbone.quantization="
                    f"{self.backbone_cfg.quantization}: set one of them"
                )
            self.backbone_cfg.quantization = quantization
        self.quantization = quantization
        if self.backbone_cfg is not None and init_from is None:
            self.backbone_cfg.validate()  # fail at config time, before any weights load
        self.init_from = init_from
        self.samples_cfg = samples or SampleConfig()
        if isinstance(prompt_format, dict):
            prompt_format = PromptFormat.from_dict(prompt_format)
        self.prompt_format = prompt_format
        self.judge = load_judge(self.samples_cfg.judge)  # a bad judge name fails here, before weights load
        self.save_hyperparameters()
        self.net = None  # the Backbone, built in configure_model
        self.val_loss = MeanMetric()
        self.state = _SFTState()

    @property
    def log_step(self) -> int:
        """The step written with our own metrics and samples: optimizer steps done - 1, as on Lightning's rows."""
        return max(self.global_step - 1, 0)

    # ---- building ---------------------------------------------------------------------------------------
    def load_text_format(self):
        """The init_from stage's tokenizer (or the backbone's), with this stage's prompt format when set."""
        from lit_rlhf.backbone.build import load_config_tokenizer
        from lit_rlhf.data.formatting import TextFormat

        if self.init_from is not None:
            fmt = stage_text_format(self.init_from, self._trust_code)
            return TextFormat(fmt.tokenizer, self.prompt_format or fmt.prompt_format)
        return TextFormat(load_config_tokenizer(self.backbone_cfg), self.prompt_format)

    @property
    def _trust_code(self) -> bool:
        """The user's own backbone.trust_remote_code, also for init_from: never the stage directory's manifest."""
        return bool(self.backbone_cfg is not None and self.backbone_cfg.trust_remote_code)

    def configure_model(self) -> None:
        if self.net is not None:  # idempotent: Lightning may call it again (e.g. on resume)
            return
        from lit_rlhf.backbone.build import POLICY, Backbone

        if self.init_from is not None:
            from lit_rlhf.checkpoint.stage_dir import load_stage_dir

            net, _ = load_stage_dir(
                self.init_from,
                device=self._target_device(),
                backbone_overrides={"quantization": self.quantization} if self.quantization else None,
                trainable=(POLICY,),
                trust_remote_code=self._trust_code,
            )
            if net.cfg.lora is not None and POLICY not in net.adapters:
                net.add_adapter(POLICY)
        else:
            net = Backbone.build(self.backbone_cfg, device=self._target_device())
            if self.backbone_cfg.lora is not None:
                net.add_adapter(POLICY)
        net.prompt_format = self.text_format.prompt_format
        net.train()  # from_pretrained returns eval mode; dropout as configured
        shard_if_fsdp2(self, net)
        self.net = net

    # ---- training ---------------------------------------------------------------------------------------
    def _target_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, V) logits at the N positions whose next token is a target (`Backbone.target_logits`: the prompt's
        positions skip the vocabulary projection). Packed rows carry position_ids restarting at every example;
        given them and no attention mask, transformers builds a causal mask per example, so no example attends to
        the one before it."""
        positions = batch.get("position_ids")
        mask = None if positions is not None else batch["attention_mask"]
        keep = target_positions(batch["labels"])
        return self.net.target_logits(batch["input_ids"], mask, positions, keep)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's own per-token mean loss (validation, and what is logged)."""
        return lm_loss_at_targets(self._target_logits(batch), batch["labels"])

    def _train_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, the micro-batch's own per-token mean for the log).

        Each token weighs the same in an optimizer step whatever the micro-batches' lengths: the summed loss is
        divided by the step's target count (``num_targets``: all micro-batches of the accumulation window on all
        ranks), times accumulate x world size, which Lightning's division by the accumulation count and the
        data-parallel gradient mean take back out. Averaging per-micro-batch means instead overweights the tokens
        of short micro-batches (the bug transformers fixed in 2024).
        """
        total = lm_loss_at_targets(self._target_logits(batch), batch["labels"], num_targets=1.0)  # summed
        own = max(int((batch["labels"][:, 1:] != -100).sum()), 1)
        if "num_targets" not in batch:
            return total / own, (total / own).detach()
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        return total * scale / batch["num_targets"].clamp(min=1), (total / own).detach()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        loss, mean = self._train_losses(batch)
        if not self.guard.loss_ok(loss, self.global_step, self.trainer.strategy.reduce_boolean_decision):
            self.log("sft/skipped_updates", float(self.guard.skipped), on_step=True)
            return None  # Lightning skips backward and the optimizer step
        now = time.perf_counter()
        tokens = int(batch["attention_mask"].sum())
        if self.state.last_time:
            self.log("sft/tokens_per_s", tokens / max(now - self.state.last_time, 1e-9), on_step=True)
        self.state.last_time = now
        self.log("sft/loss", mean, on_step=True, prog_bar=True)
        self.log("sft/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        self.log("sft/response_tokens", float((batch["labels"] != -100).sum()), on_step=True, reduce_fx="sum")
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.val_loss.update(loss, weight=int((batch["labels"][:, 1:] != -100).sum()))

    def on_validation_epoch_end(self) -> None:
        val = self.val_loss.compute()
        self.val_loss.reset()
        self.log("sft/val_loss", val, prog_bar=True, sync_dist=False)
        self.log("sft/val_ppl", torch.exp(val), sync_dist=False)
        if not self.trainer.sanity_checking:
            self.state.last_val_step = self.global_step

    def final_validation(self) -> dict[str, float]:
        """Validate the final weights when the last validation came before the last step (every rank calls it).
        Returns ``{"sft/val_loss", "sft/val_ppl"}`` (also logged at the final step), or {} when not needed."""
        dm = self.trainer.datamodule
        if not getattr(dm, "val_path", None) or self.state.last_val_step == self.global_step:
            return {}
        run_validation(self, dm.val_dataloader())
        val = self.val_loss.compute()
        self.val_loss.reset()
        self.state.last_val_step = self.global_step
        metrics = {"sft/val_loss": float(val), "sft/val_ppl": float(torch.exp(val))}
        if self.trainer.is_global_zero and self.logger is not None:
            for lg in self.trainer.loggers:  # the run directory's and every configured tracker
                lg.log_metrics(metrics, step=self.log_step)
        return metrics

    # ---- samples and evaluation ------------------------------------------------------------------------
    def _fixed_prompts(self) -> tuple[list[PromptSpec], list[str | None]]:
        st = self.state
        if not st.sample_prompts:
            cfg = self.samples_cfg
            if cfg.prompts is not None:
                st.sample_prompts, st.sample_references = read_prompts(cfg.prompts, limit=cfg.num_prompts)
            elif hasattr(self.trainer.datamodule, "val_prompts"):
                st.sample_prompts = self.trainer.datamodule.val_prompts(cfg.num_prompts)
                st.sample_references = self.trainer.datamodule.val_references(cfg.num_prompts)
        return st.sample_prompts, st.sample_references

    def log_samples(self) -> dict[str, float]:
        """Greedy and sampled completions of the fixed prompts -> samples.jsonl; judge metrics if any."""
        prompts, refs = self._fixed_prompts()
        if not prompts or not computes_on_this_rank(self.trainer, self.net) or not self.trainer.loggers:
            return {}
        if self.state.last_sample_step == self.global_step:  # the last periodic log already covered this step
            return {}
        self.state.last_sample_step = self.global_step
        cfg = self.samples_cfg
        greedy_cfg = SamplingConfig(max_new_tokens=cfg.sampling.max_new_tokens, do_sample=False)
        modes = {"greedy": greedy_cfg, "sampled": cfg.sampling}
        metrics: dict[str, float] = {}
        for mode, sampling in modes.items():
            gens = generate_batches(
                self.net.model,
                self.text_format,
                prompts,
                sampling,
                cfg.eval_batch_size,
                seed=self.global_step,
            )
            texts = [t for g in gens for t in g.texts]
            judged = [
                judge_item(self.judge, p, t, r) if self.judge else {}
                for p, t, r in zip(prompts, texts, refs, strict=True)
            ]
            rows = [
                {"step": self.log_step, "prompt": prompt_to_json(p), "completion": t, "mode": mode, **j}
                for p, t, j in zip(prompts, texts, judged, strict=True)
            ]
            if self.trainer.is_global_zero:  # under FSDP2 every rank generated; one writes
                log_rows(self.trainer, SAMPLES, rows, self.log_step)
            figures = judge_metrics(self.judge, prompts, texts, refs) if self.judge else {}
            for k, v in figures.items():
                if k != "judged":
                    metrics[f"sft/{k}" if mode == "greedy" else f"sft/{k}_sampled"] = v
        if metrics and self.logger is not None:
            for lg in self.trainer.loggers:  # the run directory's and every configured tracker
                lg.log_metrics(metrics, step=self.log_step)
        return metrics

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.samples_cfg.every_n_steps
        if n and self.global_step % n == 0 and self.global_step > 0 and self.trainer.loggers:
            self.log_samples()

    def evaluate_held_out(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts scored by the judge (empty without either)."""
        cfg = self.samples_cfg
        if cfg.eval_prompts is None or self.judge is None:
            return {}
        prompts, refs = read_prompts(cfg.eval_prompts, limit=cfg.eval_limit)
        greedy = SamplingConfig(max_new_tokens=cfg.sampling.max_new_tokens, do_sample=False)
        gens = generate_batches(self.net.model, self.text_format, prompts, greedy, cfg.eval_batch_size)
        return judge_metrics(self.judge, prompts, [t for g in gens for t in g.texts], refs)

    def on_train_end(self) -> None:
        # on_train_end, not on_fit_end: callbacks' on_fit_end (RunStatus) runs before the module's.
        if not self.trainer.loggers:
            return  # no run directory (logger=False): nothing to write into
        final = self.final_validation()  # every rank: the validation loss syncs across ranks
        if not computes_on_this_rank(self.trainer, self.net):
            return
        self.log_samples()
        cm = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        cm.update(final)
        metrics = {k.split("/", 1)[1]: cm[k] for k in ("sft/loss", "sft/val_loss", "sft/val_ppl") if k in cm}
        last_val = self.state.last_val_step if self.state.last_val_step is not None else self.global_step
        steps = {k: last_val for k in ("val_loss", "val_ppl")}
        held_out = self.evaluate_held_out()
        metrics.update(held_out)
        if held_out and self.logger is not None:
            for lg in self.trainer.loggers:  # the run directory's and every configured tracker
                lg.log_metrics({f"sft/eval_{k}": v for k, v in held_out.items()}, step=self.log_step)
        state = self.gathered_state(self.net)  # a collective: before the rank check
        if self.trainer.is_global_zero:
            self.export_stage_dir(self.net, state, metrics=metrics, metric_steps=steps)
