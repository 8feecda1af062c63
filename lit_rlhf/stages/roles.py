"""The four PPO roles (policy, reference, reward, critic) on one shared backbone or as separate copies.

Shared (LoRA): one frozen base in memory; the roles are named adapters plus scalar heads:
    policy    = "policy" adapter (trainable; from the SFT policy adapter, or fresh on an SFT-trained base)
    reference = adapters off when the base holds the SFT weights, else a frozen "reference" copy of the SFT adapter
    reward    = frozen "reward" adapter + "reward" head (from the reward stage directory), and its "rules" head of
                rule-violation logits when the reward stage trained one (Sparrow)
    critic    = "critic" adapter + "value" head, both initialised from the reward model (InstructGPT)
Separate (no LoRA): four backbones; memory is about 4x the model (plus optimizer state for policy and critic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_rlhf.backbone.build import (
    CRITIC,
    POLICY,
    REFERENCE,
    REWARD,
    RULES,
    Backbone,
    position_ids_from_mask,
    train_base,
)
from lit_rlhf.backbone.config import LoraSettings
from lit_rlhf.backbone.trunk import same_tokens
from lit_rlhf.data.comparisons import reward_inputs

log = logging.getLogger(__name__)

VALUE = "value"


def _same_base(sft_manifest, rm_manifest) -> bool:
    a, b = sft_manifest.base, rm_manifest.base
    if a.get("kind") != b.get("kind"):
        return False
    if a["kind"] == "pretrained":
        key = lambda m: (m.get("name_or_path"), m.get("revision"), m.get("gguf_file"))  # noqa: E731
        return key(a) == key(b)
    sizes = lambda m: {k: v for k, v in m.files.items() if k.startswith("base/")}  # noqa: E731
    return sizes(sft_manifest) == sizes(rm_manifest) and bool(sizes(sft_manifest))


class Roles(nn.Module):
    """Policy, reference, reward and critic behind one interface, shared or separate."""

    def __init__(
        self,
        shared: Backbone | None = None,
        separate: dict[str, Backbone] | None = None,
        reference_adapter: str | None = None,
        reward_bias: float = 0.0,
        reward_adapter: str | None = REWARD,
        reward_max_length: int | None = None,
    ) -> None:
        super().__init__()
        self.shared = shared
        self.separate = nn.ModuleDict(separate or {})
        self.reference_adapter = reference_adapter  # None = adapters off (shared mode)
        self.reward_bias = reward_bias
        self.reward_adapter = reward_adapter
        self.reward_max_length = (
            reward_max_length  # the reward model's training max_length (inputs cut alike)
        )

    @property
    def is_shared(self) -> bool:
        return self.shared is not None

    # ---- building ---------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        policy_from: str,
        reward_from: str,
        lora: LoraSettings | None = None,
        quantization: str | None = None,
        device: Any = "cpu",
        reference_from: str | None = None,
    ) -> Roles:
        """Build the roles from a policy (an SFT stage, or a PPO stage to continue) and a reward stage directory
        (shared when the reward model is LoRA). `reference_from`: the SFT stage the KL penalty keeps the policy
        near, when the policy starts elsewhere (a later round of iterated RLHF); default `policy_from`."""
        from lit_rlhf.checkpoint.manifest import read_manifest
        from lit_rlhf.checkpoint.stage_dir import _load_tensors, load_stage_dir

        sft_m, rm_m = read_manifest(policy_from), read_manifest(reward_from)
        ref_m = sft_m if reference_from is None else read_manifest(reference_from)
        if "reward" not in rm_m.heads:
            raise ValueError(
                f"{reward_from}: stage {rm_m.stage!r} has no reward head; pass a reward stage directory"
            )
        check_no_gradient_checkpointing(sft_m, rm_m, ref_m)
        warn_if_requantized(rm_m.backbone.get("quantization", "none"), quantization, reward_from)
        head = rm_m.heads["reward"]
        shared = head.get("adapter") is not None
        if not shared:
            bias = float(head.get("bias", 0.0))
            roles = cls._load_separate(policy_from, reward_from, bias, device, reference_from or policy_from)
            roles.reward_max_length = rm_m.extra.get("max_length")
            return roles
        for other, m in ((reward_from, rm_m), (reference_from, ref_m)):
            if not _same_base(sft_m, m):
                raise ValueError(
                    f"{other} was not trained on the base of {policy_from}: a shared-base PPO needs "
                    "the reward model's LoRA adapter (and the reference) on the SFT stage's base"
                )
        overrides: dict[str, Any] = {}
        if quantization is not None:
            overrides["quantization"] = quantization
        rm_lora = rm_m.backbone.get("lora")
        if sft_m.backbone.get("lora") is None:
            overrides["lora"] = rm_lora if lora is None else dataclasses.asdict(lora)
        # only the policy: a PPO stage's critic and value head give way to the new reward model's (InstructGPT)
        net, _ = load_stage_dir(
            policy_from,
            device=device,
            backbone_overrides=overrides,
            trainable=(POLICY,),
            adapters=(POLICY,),
            heads=(),
        )
        root = Path(reward_from)
        if net.cfg.lora.__dict__ != LoraSettings(**rm_lora).__dict__:
            raise ValueError(
                f"{reward_from}: its LoRA settings {rm_lora} differ from the policy's {net.cfg.lora}"
            )
        reward_state = _load_tensors(root / rm_m.adapters["reward"])
        net.add_adapter(REWARD, trainable=False, state=reward_state)
        net.add_adapter(CRITIC, trainable=True, state=reward_state)
        head_state = _load_tensors(root / head["path"])
        net.add_head(REWARD, head_state).requires_grad_(False)
        net.add_head(VALUE, head_state)
        if RULES in rm_m.heads:
            rules = rm_m.heads[RULES]
            state = _load_tensors(root / rules["path"])
            net.add_head(RULES, state, outputs=rules["outputs"]).requires_grad_(False)
        reference = None
        if reference_from is not None and POLICY in ref_m.adapters:  # the SFT adapter the policy started from
            state = _load_tensors(Path(reference_from) / ref_m.adapters[POLICY])
            net.add_adapter(REFERENCE, trainable=False, state=state)
            reference = REFERENCE
        elif reference_from is None and POLICY in net.adapters:  # SFT trained an adapter: a frozen copy of it
            net.add_adapter(REFERENCE, trainable=False, state=net.adapter_state(POLICY))
            reference = REFERENCE
        # else SFT trained the base (the shared base itself): reference = adapters off
        if POLICY not in net.adapters:  # the policy starts as a no-op adapter on the SFT-trained base
            net.add_adapter(POLICY, trainable=True)
        net.use_adapter_(POLICY)
        return cls(
            shared=net.train(),
            reference_adapter=reference,
            reward_bias=float(head.get("bias", 0.0)),
            reward_max_length=rm_m.extra.get("max_length"),
        )

    @classmethod
    def _load_separate(
        cls, policy_from: str, reward_from: str, bias: float, device: Any, reference_from: str
    ) -> Roles:
        from lit_rlhf.checkpoint.stage_dir import load_stage_dir

        policy, _ = load_stage_dir(policy_from, device=device, trainable=(POLICY,))
        reference, _ = load_stage_dir(reference_from, device=device)
        reward, _ = load_stage_dir(reward_from, device=device)
        critic, _ = load_stage_dir(reward_from, device=device)
        if policy.cfg.lora is not None or reward.cfg.lora is not None:
            raise ValueError("separate roles need full-weight stages; LoRA stages share one base instead")
        train_base(policy.model, policy.cfg.top_layers)
        train_base(critic.model, critic.cfg.top_layers)
        critic.heads[VALUE] = critic.heads.pop(REWARD)
        if RULES in critic.heads:  # the critic starts from the reward model's trunk, not its rule classifiers
            del critic.heads[RULES]
        for frozen in (reference, reward):
            frozen.requires_grad_(False).eval()
        roles = cls(
            separate={
                "policy": policy.train(),
                "reference": reference,
                "reward": reward,
                "critic": critic.train(),
            },
            reward_bias=bias,
            reward_adapter=None,
        )
        return roles

    # ---- access -----------------------------------------------------------------------------------------
    def _net(self, role: str) -> Backbone:
        return self.shared if self.is_shared else self.separate[role]

    def _adapter(self, role: str) -> str | None:
        if not self.is_shared:
            return None
        return {"policy": POLICY, "reference": self.reference_adapter, "reward": REWARD, "critic": CRITIC}[
            role
        ]

    @property
    def tokenizer(self):
        return self._net("policy").tokenizer

    @property
    def text_format(self):
        """The policy's tokenizer and prompt format (the SFT stage's)."""
        return self._net("policy").text_format

    def policy_parameters(self) -> list[nn.Parameter]:
        net = self._net("policy")
        if self.is_shared:
            return net.adapter_parameters(POLICY)
        return [p for p in net.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        net = self._net("critic")
        if self.is_shared:
            return net.adapter_parameters(CRITIC) + list(net.heads[VALUE].parameters())
        return [p for p in net.parameters() if p.requires_grad]

    def generation_model(self) -> nn.Module:
        """The model whose ``generate`` samples from the policy (policy adapter made active)."""
        net = self._net("policy")
        if self.is_shared:
            net.use_adapter_(POLICY)
        return net.model

    # ---- compute ----------------------------------------------------------------------------------------
    def logits(self, role: str, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) -> (B, L, V) logits of the policy or the reference."""
        net = self._net(role)
        pos = position_ids_from_mask(attention_mask)
        if not self.is_shared:
            return net(input_ids, attention_mask, pos)
        with net.use_adapter(self._adapter(role)):
            return net(input_ids, attention_mask, pos)

    @contextlib.contextmanager
    def shared_trunk(
        self, input_ids: Tensor, attention_mask: Tensor, hidden: Tensor | None = None
    ) -> Iterator[bool]:
        """Sparrow's shared trunk: with every adapter on the top layers only (``backbone.top_layers``), passes of
        any role over exactly these tensors inside the block run only the top layers; the frozen lower layers run
        once here, without gradients, or not at all when `hidden` (B, L, H) is their output kept by `trunk_hidden`
        for these rows. Yields whether that happens (separate roles, or no top_layers: full passes)."""
        if not self.is_shared:
            yield False
            return
        with self.shared.shared_trunk(
            input_ids, attention_mask, position_ids_from_mask(attention_mask), hidden
        ) as on:
            yield on

    @property
    def has_shared_trunk(self) -> bool:
        """Whether `shared_trunk` blocks run the lower layers once (one base, a supported top_layers split)."""
        return self.is_shared and self.shared.trunk is not None

    def trunk_hidden(self) -> Tensor | None:
        """Inside `shared_trunk`: the lower layers' output (B, L, H) for its rows; None without a shared trunk."""
        return self.shared.trunk_hidden if self.is_shared else None

    def response_logits(self, role: str, input_ids: Tensor, attention_mask: Tensor, start: int) -> Tensor:
        """(B, L) -> (B, L - start, V) float32 predictions of tokens start..L-1 by the policy or the reference."""
        net = self._net(role)
        pos = position_ids_from_mask(attention_mask)
        if not self.is_shared:
            return net.response_logits(input_ids, attention_mask, pos, start)
        with net.use_adapter(self._adapter(role)):
            return net.response_logits(input_ids, attention_mask, pos, start)

    @torch.no_grad()
    def reward_of(self, prompts: list[Any], responses: list[str]) -> Tensor:
        """RM score (bias applied) of (prompt, response text) pairs, built by `reward_inputs` exactly as the
        reward model was trained on them: (B,) float32."""
        device = next(self._net("reward").parameters()).device
        ids, mask = reward_inputs(self.text_format, prompts, responses, self.reward_max_length)
        return self.reward(ids.to(device), mask.to(device))

    @property
    def rule_names(self) -> list[str]:
        """The reward model's rule heads, in output order (empty without them)."""
        heads = self._net("reward").heads
        return list(heads[RULES].outputs) if RULES in heads else []

    @torch.no_grad()
    def reward_and_rules(
        self, prompts: list[Any], responses: list[str], trunk: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The RM score (bias applied, (B,)) and the rule heads' violation logits ((B, R), or None without rule
        heads) of (prompt, response text) pairs, from ONE forward pass of the reward model's trunk.

        The reward model reads its own sequence (`reward_inputs`). With `trunk`, the (B, T) ids and mask of an open
        `shared_trunk` block (`closing_column`'s layout), rows whose real tokens are exactly that sequence are
        scored from the block's lower-layer output (only the top layers run); the other rows (a response text that
        tokenizes differently from the sampled tokens, a sequence cut to the reward model's max length) get the
        reward model's own full pass, so the scores are those of the sequences it was trained on either way.
        """
        net = self._net("reward")
        device = next(net.parameters()).device
        ids, mask = reward_inputs(self.text_format, prompts, responses, self.reward_max_length)
        ids, mask = ids.to(device), mask.to(device)
        heads = (REWARD, RULES) if self.rule_names else (REWARD,)

        def score(i: Tensor, m: Tensor) -> dict[str, Tensor]:
            with net.use_adapter(self._adapter("reward")) if self.is_shared else contextlib.nullcontext():
                return net.score_heads(heads, i, m, position_ids_from_mask(m))

        if trunk is None:
            out = score(ids, mask)
        else:
            out = score(*trunk)  # top layers only: the block's tensors
            own = (~same_tokens(trunk[0], trunk[1], ids, mask)).nonzero().squeeze(1)
            if len(own):
                mine = score(ids[own], mask[own])
                out = {k: v.index_copy(0, own, mine[k].to(v.dtype)) for k, v in out.items()}
        return out[REWARD] + self.reward_bias, out.get(RULES)

    def values(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Critic value at every position: (B, L) -> (B, L) float32."""
        net = self._net("critic")
        pos = position_ids_from_mask(attention_mask)
        with net.use_adapter(self._adapter("critic")) if self.is_shared else contextlib.nullcontext():
            hidden = net.hidden_states(input_ids, attention_mask, pos)
        return net.heads[VALUE](hidden)

    @torch.no_grad()
    def reward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """RM score at the last real token plus the stored bias: (B, L) -> (B,)."""
        net = self._net("reward")
        pos = position_ids_from_mask(attention_mask)
        with net.use_adapter(self._adapter("reward")) if self.is_shared else contextlib.nullcontext():
            return net.score(REWARD, input_ids, attention_mask, pos) + self.reward_bias


def check_no_gradient_checkpointing(*manifests: Any) -> None:
    """Refuse gradient checkpointing in PPO.

    PPO runs every role in eval mode (dropout off, so the first update's ratio is exactly 1), and transformers
    checkpoints only in training mode, so it would save nothing. Were it on, the recomputation during backward
    would run under whichever adapter is active at that moment (the policy), not the critic's: wrong value
    gradients with a shared base.
    """
    for m in manifests:
        if m.backbone.get("gradient_checkpointing"):
            raise ValueError(
                "PPO does not support backbone.gradient_checkpointing (a parent stage set it): the roles share one "
                "base and switch adapters, so a recomputed forward would run the wrong adapter, and PPO runs in "
                "eval mode, where transformers does not checkpoint anyway. Lower ppo.minibatch_size for memory"
            )


def warn_if_requantized(rm_quantization: str, ppo_quantization: str | None, reward_from: str) -> None:
    """Warn when PPO runs the reward model on a base quantized differently from the one it was trained on.

    Its adapter and head were fitted to that base's rounding: scores shift, and rankings can change.
    """
    if ppo_quantization is not None and ppo_quantization != rm_quantization:
        log.warning(
            "%s was trained on a base quantized as %r but PPO loads the shared base as %r: its scores will differ "
            "from the ones it was validated with (train the reward model with quantization %r for PPO)",
            reward_from,
            rm_quantization,
            ppo_quantization,
            ppo_quantization,
        )
