"""RewardModule: a scalar reward model trained from K-wise rankings (InstructGPT step 2, eq. 1), optionally with
rule heads (Sparrow's rule-violation classifiers) trained beside it.

The model is the SFT backbone plus a scalar head reading the last real token. With rule-label rows
(``data.rules_train_path``) a multi-label ``rules`` head reads the same trunk (the same adapter), one logit per
rule, trained with binary cross-entropy added to the ranking loss (``rule_coef``); the stage directory records the
rule names as the head's ``outputs``. With LoRA it is a ``reward``
adapter on the shared frozen base (initialised from the SFT policy adapter when SFT used LoRA); without LoRA the
whole backbone is trained. After training, a bias makes the mean reward of the SFT demonstrations 0; it is stored
in the manifest and applied whenever the reward model is loaded (RewardScorer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.functional.regression import kendall_rank_corrcoef

from lit_rlhf.backbone.build import RULES
from lit_rlhf.backbone.config import LoraSettings, Quantization
from lit_rlhf.data.shared_prefix import pack_shared_prefix
from lit_rlhf.evaluation.reward_model import score_texts
from lit_rlhf.evaluation.rules import RuleMetrics
from lit_rlhf.rl.losses import kwise_ranking_loss, rule_loss
from lit_rlhf.run_files import RANKINGS
from lit_rlhf.runs import log_rows
from lit_rlhf.stages.base import StageModule
from lit_rlhf.stages.common import (
    OptimConfig,
    computes_on_this_rank,
    run_validation,
    shard_if_fsdp2,
)

REWARD = "reward"


def per_prompt_kendall_tau(scores: Tensor, ranks: Tensor, group: Tensor) -> list[float | None]:
    """Kendall tau-b between the RM's order and the labeled order, one value per prompt.

    Args:
        scores: (N,) RM scores (higher = better). ranks: (N,) labeled ranks (0 = best). group: (N,) prompt ids.
    Returns:
        One tau per group in order of first appearance; None where it is undefined (all scores or ranks tied).
    """
    out: list[float | None] = []
    for g in torch.unique_consecutive(group):
        sel = group == g
        tau = kendall_rank_corrcoef(scores[sel].float(), -ranks[sel].float(), variant="b")
        out.append(None if not torch.isfinite(tau) else float(tau))
    return out


class RewardModule(StageModule):
    """Train a reward model from ranked comparisons; writes a ``reward`` stage directory.

    Args:
        init_from: The SFT stage directory (the RM starts from the SFT model), or a reward stage directory to train
            further (InstructGPT's iterated rounds: its adapter, reward head and rule head are the start).
        lora: LoRA settings for the ``reward`` adapter when the SFT stage trained the full model; ``null`` trains
            the full backbone. When the SFT stage used LoRA, its settings are kept (the adapter starts from it).
        quantization: Quantize the frozen base (``8bit``/``4bit``; needs LoRA). Default: as the SFT stage.
        center_coef: Weight of the centering regularizer mean(r^2), which keeps rewards near 0.
        bias_from: Demonstrations JSONL whose mean reward is set to 0 after training (the SFT demonstrations);
            default: the best-ranked response of each training comparison.
        bias_limit: At most this many demonstrations for the bias.
        rankings_limit: Validation prompts written to ``rankings.jsonl`` at every validation.
        optim: AdamW + warmup/cosine.
        max_nonfinite_updates: Stop after this many non-finite (skipped) updates in a row (0 = never).
        rules: The rules the rule head predicts, in order; null = every rule the data's rule rows label (none
            without ``data.rules_train_path``).
        rule_coef: Weight of the rule loss (mean binary cross-entropy per labeled entry) beside the ranking loss.
        shared_prefix: Run each prompt's K responses as one row, the prompt's tokens once (lit_rlhf.data.
            shared_prefix): the same rewards and gradients as K separate sequences, with fewer tokens through the
            model when prompts are long. Needs SDPA or eager attention (the default in transformers).
    """

    STAGE = "reward"

    def __init__(
        self,
        init_from: str,
        lora: LoraSettings | None = None,
        quantization: Quantization | None = None,
        center_coef: float = 0.0,
        bias_from: str | None = None,
        bias_limit: int = 512,
        rankings_limit: int = 16,
        max_length: int = 256,
        optim: OptimConfig | None = None,
        max_nonfinite_updates: int = 10,
        rules: list[str] | None = None,
        rule_coef: float = 1.0,
        shared_prefix: bool = False,
    ) -> None:
        super().__init__(init_from, optim or OptimConfig(lr=1e-4, warmup_steps=20), max_nonfinite_updates)
        if center_coef < 0:
            raise ValueError("center_coef must be >= 0")
        if rule_coef < 0:
            raise ValueError("rule_coef must be >= 0")
        self.rules, self.rule_coef = (list(rules) if rules is not None else None), rule_coef
        self.rule_names: list[str] = []  # the rule head's outputs, once built
        self._rule_columns: list[int] = []  # where each of them sits in the data's label columns
        self.rule_metrics: RuleMetrics | None = None
        self.val_rule_loss = MeanMetric()
        self.init_from, self.lora, self.quantization = init_from, lora, quantization
        self.center_coef, self.bias_from, self.bias_limit = center_coef, bias_from, bias_limit
        self.rankings_limit, self.max_length = rankings_limit, max_length
        self.shared_prefix = shared_prefix
        self.save_hyperparameters()
        self.net = None
        self.val_acc, self.val_tau, self.val_margin = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_s, self.val_s2 = MeanMetric(), MeanMetric()
        self._table: list[dict[str, Any]] = []
        self.final_metrics: dict[str, float] = {}
        self.metric_steps: dict[str, int] = {}
        self._last_val_step: int | None = None

    # ---- building ---------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.net is not None:
            return
        from lit_rlhf.backbone.build import POLICY, train_base
        from lit_rlhf.checkpoint.manifest import read_manifest
        from lit_rlhf.checkpoint.stage_dir import load_stage_dir

        parent = read_manifest(self.init_from)
        sft_lora = parent.backbone.get("lora")
        overrides: dict[str, Any] = {}
        if self.quantization is not None:
            overrides["quantization"] = self.quantization
        if sft_lora is None and self.lora is not None:
            overrides["lora"] = dataclasses.asdict(self.lora)
        further = parent.stage == "reward"  # iterated rounds: train the last round's reward model further
        net, _ = load_stage_dir(
            self.init_from,
            device=self._target_device(),
            backbone_overrides=overrides,
            trainable=(REWARD,) if further else (),
        )
        if further and REWARD not in net.heads:
            raise ValueError(f"{self.init_from}: a reward stage without a reward head")
        if net.cfg.lora is not None and not further:
            # start the reward adapter from the SFT policy adapter when there is one, else from the bare base
            state = net.adapter_state(POLICY) if POLICY in net.adapters else None
            net.add_adapter(REWARD, trainable=True, state=state)
        elif net.cfg.lora is None:
            train_base(net.model, net.cfg.top_layers)
        if not further:
            net.add_head(REWARD)
        self._add_rule_head(net)
        net.train()  # from_pretrained returns eval mode; dropout as configured
        shard_if_fsdp2(self, net)
        self.net = net

    def _add_rule_head(self, net) -> None:
        """The rule head, when there are rules: the one a reward stage started from already has (its rules), else
        the configured ones, else every rule the training rows label."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        data_names = list(getattr(dm, "rule_names", []) or [])
        if RULES in net.heads:
            names = list(net.heads[RULES].outputs)
            if self.rules is not None and self.rules != names:
                raise ValueError(
                    f"RewardModule.rules {self.rules} differ from the rules of {self.init_from} ({names})"
                )
        else:
            names = self.rules if self.rules is not None else data_names
        if not names:
            return
        missing = [n for n in names if n not in data_names]
        if missing:
            path = getattr(dm, "rules_paths", {}).get("train")
            raise ValueError(
                f"RewardModule.rules names {missing}, which no row of the rule data ({path}) labels "
                f"(it labels {data_names}); set data.init_args.rules_train_path or fix the names"
            )
        if RULES not in net.heads:
            net.add_head(RULES, outputs=names)
        self.rule_names, self._rule_columns = list(names), [data_names.index(n) for n in names]
        self.rule_metrics = RuleMetrics(names)

    @property
    def reward_adapter(self) -> str | None:
        return REWARD if self.net.cfg.lora is not None else None

    # ---- steps ------------------------------------------------------------------------------------------
    def _scores(self, batch: dict[str, Any]) -> Tensor:
        """(N, T) -> (N,) rewards (the reward adapter is the active one): one forward pass per response, or with
        ``shared_prefix`` one per prompt."""
        if not self.shared_prefix:
            return self.net.score(REWARD, batch["input_ids"], batch["attention_mask"])
        rows = pack_shared_prefix(
            batch["input_ids"], batch["attention_mask"], batch["group"], self.net.text_format.pad_id
        )
        return self.net.score_shared_prefix((REWARD,), rows)[REWARD]

    def _rule_out(self, rules: dict[str, Tensor]):
        """Rule loss of a batch of labeled responses (the reward adapter is the active one)."""
        logits = self.net.score(RULES, rules["input_ids"], rules["attention_mask"])  # (M, R)
        cols = self._rule_columns
        return logits, rule_loss(logits, rules["labels"][:, cols], rules["mask"][:, cols])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        scores = self._scores(batch)  # (N,)
        out = kwise_ranking_loss(scores, batch["ranks"], batch["group"])
        loss = out.loss + self.center_coef * scores.pow(2).mean()
        n_prompts = len(batch["prompts"])
        if self.rule_names and "rules" in batch:
            _, rules = self._rule_out(batch["rules"])
            loss = loss + self.rule_coef * rules.loss  # Sparrow: the rule heads share the trunk
            self.log("reward/rule_loss", rules.loss, batch_size=n_prompts)
            if int(rules.n_labels) > 0:
                self.log("reward/rule_accuracy", rules.accuracy, batch_size=n_prompts)
        if not self.guard.loss_ok(loss, self.global_step, self.trainer.strategy.reduce_boolean_decision):
            self.log("reward/skipped_updates", float(self.guard.skipped), batch_size=n_prompts)
            return None  # Lightning skips backward and the optimizer step
        self.log("reward/loss", out.loss, prog_bar=True, batch_size=n_prompts)
        if int(out.n_pairs) > 0:
            self.log("reward/accuracy", out.accuracy, prog_bar=True, batch_size=n_prompts)
            self.log("reward/margin", out.margin, batch_size=n_prompts)
        self.log("reward/score_mean", scores.mean(), batch_size=n_prompts)
        self.log("reward/score_std", scores.std() if scores.numel() > 1 else 0.0, batch_size=n_prompts)
        self.log("reward/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n_prompts)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # held-out rule rows (ComparisonDataModule.val_dataloader)
            if self.rule_names:
                logits, out = self._rule_out(batch)
                cols = self._rule_columns
                if int(out.n_labels) > 0:
                    self.val_rule_loss.update(out.loss, weight=int(out.n_labels))
                self.rule_metrics.update(
                    torch.sigmoid(logits), batch["labels"][:, cols], batch["mask"][:, cols]
                )
            return
        scores = self._scores(batch).float()
        out = kwise_ranking_loss(scores, batch["ranks"], batch["group"])
        if int(out.n_pairs) > 0:
            self.val_acc.update(out.accuracy, weight=int(out.n_pairs))
            self.val_margin.update(out.margin, weight=int(out.n_pairs))
        taus = per_prompt_kendall_tau(scores, batch["ranks"], batch["group"])
        for t in taus:
            if t is not None:
                self.val_tau.update(t)
        self.val_s.update(scores)
        self.val_s2.update(scores.pow(2))
        self._collect_table(batch, scores, taus)

    def _collect_table(self, batch: dict[str, Any], scores: Tensor, taus: list[float | None]) -> None:
        if len(self._table) >= self.rankings_limit:
            return
        offset = 0
        for p, (prompt, responses) in enumerate(zip(batch["prompts"], batch["responses"], strict=True)):
            k = len(responses)
            s = scores[offset : offset + k].tolist()
            r = batch["ranks"][offset : offset + k].tolist()
            offset += k
            pairs = [(i, j) for i in range(k) for j in range(k) if r[i] < r[j]]
            self._table.append(
                {
                    "prompt": prompt,
                    "responses": responses,
                    "labeled_rank": r,
                    "scores": s,
                    "kendall_tau": taus[p],
                    "pairs": len(pairs),
                    "pairs_correct": sum(s[i] > s[j] for i, j in pairs),
                }
            )
            if len(self._table) >= self.rankings_limit:
                return

    def _validation_metrics(self) -> dict[str, Tensor]:
        """The epoch's validation figures (synced across ranks by torchmetrics), then the metrics reset."""
        mean, mean2 = self.val_s.compute(), self.val_s2.compute()
        metrics = {
            "reward/val_accuracy": self.val_acc.compute(),
            "reward/val_kendall_tau": self.val_tau.compute(),
            "reward/val_margin": self.val_margin.compute(),
            "reward/val_score_mean": mean,
            "reward/val_score_std": torch.sqrt(torch.clamp(mean2 - mean**2, min=0.0)),
        }
        for m in (self.val_acc, self.val_tau, self.val_margin, self.val_s, self.val_s2):
            m.reset()
        if self.rule_metrics is not None and self.val_rule_loss.update_count > 0:
            metrics["reward/val_rule_loss"] = self.val_rule_loss.compute()
            figures = self.rule_metrics.compute()
            metrics.update({f"reward/val_rule/{k}": torch.tensor(v) for k, v in figures.items()})
            self.val_rule_loss.reset()
            self.rule_metrics.reset()
        return metrics

    def _write_rankings(self) -> None:
        if self.trainer.is_global_zero and self.trainer.loggers and not self.trainer.sanity_checking:
            step = max(self.global_step - 1, 0)
            log_rows(self.trainer, RANKINGS, [{"step": step, **row} for row in self._table], step)
        self._table = []

    def on_validation_epoch_end(self) -> None:
        metrics = self._validation_metrics()
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k == "reward/val_accuracy")
        if not self.trainer.sanity_checking:
            self._last_val_step = self.global_step
        self._write_rankings()

    def final_validation(self) -> dict[str, float]:
        """Validate the final weights when the last validation came before the last step (a collective: every
        rank calls it). Returns the figures, also logged at the final step; empty when nothing was needed."""
        dm = self.trainer.datamodule
        if not getattr(dm, "val_path", None) or self._last_val_step == self.global_step:
            return {}
        loaders = dm.val_dataloader()
        for idx, loader in enumerate(loaders if isinstance(loaders, list) else [loaders]):
            run_validation(self, loader, idx)
        metrics = {k: float(v) for k, v in self._validation_metrics().items()}
        self._last_val_step = self.global_step
        self._write_rankings()
        if self.trainer.is_global_zero and self.logger is not None:
            for lg in self.trainer.loggers:  # the run directory's and every configured tracker
                lg.log_metrics(metrics, step=max(self.global_step - 1, 0))
        return metrics

    # ---- the end: bias and stage directory --------------------------------------------------------------
    def compute_bias(self) -> float:
        """Minus the mean reward of the SFT demonstrations (so they score 0 on average)."""
        if self.bias_from is not None:
            from lit_rlhf.data.rows import read_rows

            rows, _ = read_rows(self.bias_from, "demonstration", limit=self.bias_limit)
            pairs = [(r.prompt_spec, r.answer) for r in rows]
        else:
            pairs = self.trainer.datamodule.demonstrations()[: self.bias_limit]
        if not pairs:
            return 0.0
        scores = score_texts(
            self.net,
            REWARD,
            self.reward_adapter,
            0.0,
            [p for p, _ in pairs],
            [r for _, r in pairs],
            max_length=self.max_length,
        )
        return -sum(scores) / len(scores)

    def on_train_end(self) -> None:
        if not self.trainer.loggers:
            return
        final = self.final_validation()  # every rank: the metrics sync across ranks
        if not computes_on_this_rank(self.trainer, self.net):
            return
        bias = self.compute_bias()
        state = self.gathered_state(self.net)  # a collective: before the rank check
        if not self.trainer.is_global_zero:
            return
        cm = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        cm.update(final)
        last_val = self._last_val_step if self._last_val_step is not None else self.global_step
        metrics, steps = {}, {}
        keys = ["reward/val_accuracy", "reward/val_kendall_tau", "reward/val_margin", "reward/loss"]
        keys += sorted(k for k in cm if k == "reward/val_rule_loss" or k.startswith("reward/val_rule/"))
        for key in keys:
            if key in cm and math.isfinite(cm[key]):
                name = key.split("/", 1)[1]
                metrics[name] = cm[key]
                steps[name] = self.global_step if name == "loss" else last_val
        metrics["bias"] = bias
        self.metric_steps = steps
        dm = self.trainer.datamodule
        if hasattr(dm, "data"):
            from lit_rlhf.data.comparisons import tie_share

            metrics["train_comparisons"] = float(len(dm.data.get("train", [])))
            metrics["train_tied_pair_share"] = tie_share(dm.data.get("train", []))
        self.final_metrics = metrics
        adapters = [REWARD] if self.reward_adapter else []
        heads = {REWARD: {"adapter": self.reward_adapter, "bias": bias}}
        if self.rule_names:
            heads[RULES] = {"adapter": self.reward_adapter, "bias": 0.0}  # names recorded as its outputs
        self.export_stage_dir(
            self.net,
            state,
            adapters=adapters,
            heads=heads,
            metrics=metrics,
            metric_steps=steps,
            extra={"max_length": self.max_length},
        )
        for lg in self.trainer.loggers:  # the run directory's and every configured tracker
            lg.log_metrics({"reward/bias": bias}, step=max(self.global_step - 1, 0))
