"""PPO data: batches of prompts for rollouts, plus pretraining text for the ptx term and the alignment-tax metric.

Each training batch is ``{"prompts": [str] * B, "ptx": {input_ids, attention_mask, labels} or absent}``. The prompts
define the epoch; the pretraining stream cycles with epochs of its own. Both are functions of the batch's global
position (``resumable``), so a resumed run continues with the prompts and pretraining rows it would have seen.
The last ``ptx_holdout`` pretraining rows never train: they measure the pretraining LM loss (alignment tax).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader

from lit_rlhf.data.formatting import UNKNOWN_ERROR, UNKNOWN_WARN, check_unknown_tokens, data_format
from lit_rlhf.data.padding import pad_right
from lit_rlhf.data.resumable import BatchPlan, PositionedBatches, ResumablePosition, Source, positioned_loader
from lit_rlhf.data.rows import ReadReport, read_rows
from lit_rlhf.data.sources import DataSource, as_spec

logger = logging.getLogger(__name__)


def encode_texts(texts: list[str], tokenizer: Any, max_length: int) -> tuple[list[list[int]], int]:
    """Tokenize pretraining texts (special tokens on, then eos); cut at max_length. Returns ids, number cut."""
    out, cut = [], 0
    for text in texts:
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        cut += int(len(ids) > max_length)
        out.append(ids[:max_length])
    return out, cut


def collate_lm(rows: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad LM rows: input_ids, attention_mask and labels (B, T); labels are -100 on padding."""
    ids, mask = pad_right(rows, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _as_list(batch: list[str]) -> list[str]:
    return list(batch)


class PPODataModule(ResumablePosition, L.LightningDataModule):
    """Prompts for PPO rollouts and, optionally, pretraining text for PPO-ptx.

    Args:
        prompts_path: prompts file ({"prompt"} rows; demonstration rows work too, extra keys ignored), or a
            Hugging Face dataset: a `DataSource` or its ``hf:PATH?split=...`` string (docs/data-formats.md).
        pretrain_path: pretraining text ({"text"} rows, a file or a dataset); required when the module's
            ptx_coef > 0.
        batch_size: prompts per rollout.
        ptx_batch_size: pretraining rows per training step (split across that step's PPO updates).
        ptx_max_length: pretraining rows longer than this are cut (counted and reported).
        ptx_holdout: last rows of the pretraining file kept out of training to measure the alignment tax.
        on_error: ``raise`` at the first bad row, or ``skip`` (counted and reported).
        seed: seeds the shuffles.
        unknown_tokens_warn: warn when more than this share of a file's tokens are the unknown token.
        unknown_tokens_error: stop with an error naming the file above this share.

    Under DDP each rank takes its own ``batch_size`` prompts (and pretraining rows) of every global step.
    """

    def __init__(
        self,
        prompts_path: str | DataSource,
        pretrain_path: str | DataSource | None = None,
        batch_size: int = 32,
        ptx_batch_size: int = 32,
        ptx_max_length: int = 128,
        ptx_holdout: int = 256,
        on_error: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        tokenizer: Any = None,
        unknown_tokens_warn: float = UNKNOWN_WARN,
        unknown_tokens_error: float = UNKNOWN_ERROR,
    ) -> None:
        super().__init__()
        if batch_size < 1 or ptx_batch_size < 1:
            raise ValueError("PPODataModule: batch_size and ptx_batch_size must be >= 1")
        # hparams (hparams.yaml, checkpoints) record a DataSource as its hf: string: plain data, no class to unpickle
        prompts_path, pretrain_path = as_spec(prompts_path), as_spec(pretrain_path)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.prompts_path, self.pretrain_path = prompts_path, pretrain_path
        self.batch_size, self.ptx_batch_size = batch_size, ptx_batch_size
        self.ptx_max_length, self.ptx_holdout = ptx_max_length, ptx_holdout
        self.on_error, self.seed, self.tokenizer = on_error, seed, tokenizer
        self.unknown_limits = (unknown_tokens_warn, unknown_tokens_error)
        self.reports: dict[str, ReadReport] = {}
        self.prompts: list[str] = []
        self.ptx_train: list[list[int]] = []
        self.ptx_eval: list[list[int]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.prompts:
            return
        fmt = data_format(self.tokenizer, self.trainer, "PPODataModule")
        self.tokenizer = fmt.tokenizer
        logger.info("PPO prompts: %s", fmt.describe())
        rows, self.reports["prompts"] = read_rows(self.prompts_path, "prompt", on_error=self.on_error)
        self.prompts = [r.prompt for r in rows]
        rendered = [fmt.prompt_ids(p) for p in self.prompts]
        check_unknown_tokens(self.reports["prompts"].path, rendered, self.tokenizer, *self.unknown_limits)
        if self.pretrain_path is not None:
            texts, report = read_rows(self.pretrain_path, "text", on_error=self.on_error)
            ids, report.truncated = encode_texts([t.text for t in texts], self.tokenizer, self.ptx_max_length)
            check_unknown_tokens(report.path, ids, self.tokenizer, *self.unknown_limits)
            self.reports["pretrain"] = report
            if len(ids) <= self.ptx_holdout:
                raise ValueError(
                    f"{report.path}: {len(ids)} rows, need more than ptx_holdout={self.ptx_holdout}"
                )
            cut_at = len(ids) - self.ptx_holdout
            self.ptx_train, self.ptx_eval = ids[:cut_at], ids[cut_at:]
        for name, report in self.reports.items():
            logger.info("%s: %s (%d cut to max length)", name, report.summary(), report.truncated)

    @property
    def has_pretrain(self) -> bool:
        return self.pretrain_path is not None

    def _pad(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id

    def train_dataloader(self) -> DataLoader:
        world, rank = self.world()
        per_step = self.batch_size * world
        plan = BatchPlan(
            len(self.prompts),
            self.batch_size,
            self.seed,
            drop_last=len(self.prompts) >= per_step,
            world_size=world,
            rank=rank,
        )
        sources = {"prompts": Source(self.prompts, plan, _as_list)}
        if self.ptx_train:
            per_step = self.ptx_batch_size * world
            ptx_plan = BatchPlan(
                len(self.ptx_train),
                self.ptx_batch_size,
                self.seed + 1,
                drop_last=len(self.ptx_train) >= per_step,
                world_size=world,
                rank=rank,
            )
            sources["ptx"] = Source(
                self.ptx_train, ptx_plan, functools.partial(collate_lm, pad_id=self._pad())
            )
        return positioned_loader(PositionedBatches(sources, self.resume_position))

    def ptx_eval_batches(self, batch_size: int = 64) -> list[dict[str, Tensor]]:
        """The held-out pretraining rows as LM batches (for the alignment-tax metric)."""
        pad = self._pad()
        return [
            collate_lm(self.ptx_eval[i : i + batch_size], pad)
            for i in range(0, len(self.ptx_eval), batch_size)
        ]
