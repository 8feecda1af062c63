"""Build the shared backbone: base model, quantization, named LoRA adapters, scalar heads.

This package is the ONLY place that imports bitsandbytes and peft. Stage modules receive a `Backbone` and
switch roles by adapter name; they never touch peft directly.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.data.formatting import PromptFormat, TextFormat
from lit_rlhf.data.shared_prefix import SharedPrefixRows, shared_prefix_mask

log = logging.getLogger(__name__)

# bitsandbytes warns about the same fp16 cast on every 8-bit matmul (350 identical lines in one run): once is enough.
warnings.filterwarnings("once", message=r"MatMul8bitLt: inputs will be cast")

# Adapter names of the four InstructGPT roles; the reference is "adapters off" or a frozen "reference" copy.
POLICY, REFERENCE, REWARD, CRITIC = "policy", "reference", "reward", "critic"
# The reward stage's multi-label head of rule-violation logits (Sparrow), read through the reward adapter.
RULES = "rules"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BaseSource:
    """Where the frozen base weights come from; recorded in every manifest.

    kind: ``pretrained`` (hub name or path, nothing copied; ``gguf_file`` for a GGUF file in that folder),
    ``config`` (built from an inline config, random init), or ``local`` (a transformers model directory we
    wrote, e.g. a stage directory's ``base/``).
    """

    kind: Literal["pretrained", "config", "local"]
    name_or_path: str | None = None
    revision: str | None = None
    gguf_file: str | None = None
    model_config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def torch_dtype(name: str) -> torch.dtype:
    """Map a config dtype name to the torch dtype."""
    return _DTYPES[name]


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer and make sure it can pad (falls back to EOS as the pad token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {path!r} has neither a pad nor an eos token; add one")
        tok.pad_token = tok.eos_token
    return tok


def pretrained_path(cfg: BackboneConfig) -> tuple[str, bool]:
    """Where ``from_pretrained`` reads ``cfg.name_or_path``: (path or hub name, whether it is our GGUF conversion).

    A GGUF source (``bundled:<name>``, a ``.gguf`` file, or a folder + ``gguf_file``) resolves to its cached,
    dequantized transformers folder (lit_rlhf.backbone.gguf), converted on first use.
    """
    from lit_rlhf.backbone.gguf import is_gguf_source, resolve_gguf

    if is_gguf_source(cfg.name_or_path, cfg.gguf_file):
        return str(resolve_gguf(cfg.name_or_path, cfg.gguf_file)), True
    return cfg.name_or_path, False


def load_config_tokenizer(cfg: BackboneConfig):
    """The tokenizer a backbone config names: ``cfg.tokenizer``, else the model's own (a GGUF file's included)."""
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer, cfg.revision, cfg.trust_remote_code)
    path, converted = pretrained_path(cfg)
    return load_tokenizer(path, None if converted else cfg.revision, cfg.trust_remote_code)


def _quantization_config(cfg: BackboneConfig):
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(cfg.dtype),
        )
    return None


def _avoid_cpu_4bit_repacking(model: nn.Module) -> int:
    """Turn off bitsandbytes' AVX512-BF16 CPU repacking of 4-bit weights.

    On CPU an eval-mode no-grad forward (generate, a PPO rollout) repacks the 4-bit weights in place, after
    which LoRA on Llama silently gets no gradient and GPT-2 raises an in-place error (docs/platform-notes.md).
    Costs ~1.4x on CPU 4-bit generation; harmless on CUDA, where the flag is never read.
    """
    import bitsandbytes as bnb

    n = 0
    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def build_base(
    cfg: BackboneConfig,
    tokenizer,
    weights_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    quantize: bool = True,
) -> tuple[nn.Module, BaseSource]:
    """Build the (optionally quantized) causal LM, frozen when LoRA is on.

    Args:
        cfg: Backbone settings.
        tokenizer: Its length and special ids size a from-scratch model.
        weights_dir: A local transformers directory that overrides ``cfg``'s source (a stage's ``base/``).
        device: Where quantized weights are placed (bitsandbytes quantizes on load).
        quantize: False loads in full precision even if ``cfg.quantization`` is set (export).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch_dtype(cfg.dtype)
    qconfig = _quantization_config(cfg) if quantize else None
    if weights_dir is None and cfg.model_config is not None:
        params = dict(cfg.model_config)
        hf_config = AutoConfig.for_model(params.pop("model_type"), **params)
        hf_config.vocab_size = len(tokenizer)
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(hf_config, attr, getattr(tokenizer, attr))
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        source = BaseSource(kind="config", model_config=dict(cfg.model_config))
    else:
        path, converted = (str(weights_dir), True) if weights_dir is not None else pretrained_path(cfg)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
        if converted:
            kwargs["use_safetensors"] = True  # our own directories: never unpickle
        else:
            kwargs["revision"] = cfg.revision
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
            kwargs["device_map"] = {"": str(device)}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if weights_dir is not None:
            source = BaseSource(kind="local", name_or_path=str(weights_dir))
        else:
            source = BaseSource(
                kind="pretrained",
                name_or_path=cfg.name_or_path,
                revision=cfg.revision,
                gguf_file=cfg.gguf_file,
            )
    if qconfig is not None:
        _avoid_cpu_4bit_repacking(model)
    if cfg.lora is not None:
        model.requires_grad_(False)
    else:
        train_base(model, cfg.top_layers)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, source


def train_base(model: nn.Module, top_layers: int | None) -> None:
    """Full fine-tuning: every base parameter trains, or with `top_layers` only the top decoder layers, the final
    norm and an untied output layer (the embeddings and every lower layer frozen: Sparrow's shared trunk)."""
    model.requires_grad_(True)
    if top_layers is None:
        return
    from lit_rlhf.backbone.trunk import TrunkSplit

    split = TrunkSplit.for_model(model, top_layers)
    if split is None:
        raise ValueError(f"top_layers: {type(model).__name__} has no supported decoder layer list to split")
    split.decoder.requires_grad_(False)
    for layer in getattr(split.decoder, split.attr)[split.split :]:
        layer.requires_grad_(True)
    for child in split.decoder.children():
        if "norm" in type(child).__name__.lower():  # the final norm (LlamaRMSNorm, GPT-2's ln_f LayerNorm)
            child.requires_grad_(True)
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embeddings.weight:  # tied: frozen with the embeddings
        head.requires_grad_(True)


def detect_lora_targets(model: nn.Module) -> list[str]:
    """Leaf names of every linear-like layer except the output embedding.

    Covers nn.Linear (Llama, NeoX, OPT, ...), transformers' Conv1D (GPT-2) and the bitsandbytes
    replacements (subclasses of nn.Linear).
    """
    from transformers.pytorch_utils import Conv1D

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if mod is out_emb and name}
    names = set()
    for name, mod in model.named_modules():
        if mod is out_emb or not name:
            continue
        if isinstance(mod, nn.Linear | Conv1D):
            names.add(name.rsplit(".", 1)[-1])
    names -= skip
    if not names:
        raise ValueError(
            f"found no linear layers to adapt in {type(model).__name__}; set lora.target_modules"
        )
    return sorted(names)


def num_layers(model: nn.Module) -> int:
    """Decoder layers of a transformers causal LM (its config's num_hidden_layers / n_layer)."""
    config = model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not n:
        raise ValueError(f"cannot tell how many decoder layers {type(model).__name__} has; unset top_layers")
    return int(n)


def lora_config(settings: LoraSettings, targets: list[str], layers: list[int] | None = None):
    """The peft LoraConfig for a causal LM; `layers` restricts the adapters to those decoder layers."""
    from peft import LoraConfig

    return LoraConfig(
        layers_to_transform=layers,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        modules_to_save=list(settings.modules_to_save) if settings.modules_to_save else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter belongs to an adapter: LoRA matrices, or a module trained in full beside it."""
    return "lora_" in name or ".modules_to_save." in name


def effective_layer(layer: nn.Module) -> nn.Module:
    """The module that computes for `layer` now: for peft's modules_to_save wrapper, the active adapter's own copy
    (or the original when adapters are off or the active adapter has no copy); any other module as it is."""
    if not (hasattr(layer, "original_module") and hasattr(layer, "modules_to_save")):
        return layer
    active = list(getattr(layer, "active_adapters", []))
    if layer.disable_adapters or not active or any(a not in layer.modules_to_save for a in active):
        return layer.original_module
    return layer.modules_to_save[active[0]]


def _final_logit_transforms(config, logits: Tensor) -> Tensor:
    """What some families apply after the vocabulary projection: Cohere's logit_scale, Granite's logits_scaling,
    Gemma's soft-capping (in that order, as their forwards do)."""
    if getattr(config, "logit_scale", None) is not None:
        logits = logits * float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / float(config.logits_scaling)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def output_logits(model: nn.Module, hidden: Tensor, float32: bool = True) -> Tensor:
    """The vocabulary projection of `hidden` (..., H): (..., V), final-logit transforms included.

    ``float32``: in float32, outside autocast. Under bf16 autocast a model's own logits are bf16 (~3 significant
    digits): log-ratios of policy and reference then carry ~0.005 nats of rounding noise, against true differences
    of ~1e-3. Otherwise the projection runs as the model's own forward runs it (bf16 under bf16 autocast), which is
    what a training loss such as SFT's uses.
    """
    head = effective_layer(model.get_output_embeddings())
    if not float32:
        return _final_logit_transforms(model.config, head(hidden))
    bias = getattr(head, "bias", None)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = torch.nn.functional.linear(
            hidden.float(), head.weight.float(), None if bias is None else bias.float()
        )
        return _final_logit_transforms(model.config, logits)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as `generate` uses them: (B, L) mask -> (B, L) long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-padding position of each row, for left and right padding alike.

    Args:
        attention_mask: (B, T) with 1 on real tokens.
    Returns:
        (B,) long.
    """
    t = attention_mask.shape[1]
    return (t - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)).long()


class ScalarHead(nn.Module):
    """A linear map from the last hidden state to one scalar (reward or value), kept in float32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (..., H) -> (...) float32, outside autocast: in bf16 a reward has ~3 significant digits, too
        coarse for ranking margins and value targets."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.proj(hidden.float()).squeeze(-1)


class MultiLabelHead(nn.Module):
    """A linear map from the last hidden state to one logit per named output (Sparrow's rule heads), float32.

    Args:
        hidden_size: The backbone's hidden size H.
        outputs: The output names, one per logit (recorded in the stage directory's manifest).
    """

    def __init__(self, hidden_size: int, outputs: Sequence[str]) -> None:
        super().__init__()
        if not outputs or len(set(outputs)) != len(outputs):
            raise ValueError(f"a multi-label head needs distinct output names, got {list(outputs)}")
        self.outputs = list(outputs)
        self.proj = nn.Linear(hidden_size, len(self.outputs))
        nn.init.normal_(self.proj.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (..., H) -> (..., R) float32 logits, outside autocast (as ScalarHead, for the same reason)."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.proj(hidden.float())


class Backbone(nn.Module):
    """One base causal LM, any number of named LoRA adapters, and named scalar heads.

    With LoRA, every role (policy, reference, reward, critic) shares this one frozen base; `use_adapter`
    switches which adapter is active and `use_adapter(None)` runs the bare base (the reference model when
    the base holds the SFT weights). Without LoRA the base itself is trained (full fine-tuning).
    """

    def __init__(self, model: nn.Module, tokenizer, cfg: BackboneConfig, source: BaseSource) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.source = source
        self.heads = nn.ModuleDict()
        self.prompt_format = PromptFormat()  # how prompts are rendered; stage directories record it
        self._text_format: tuple[Any, TextFormat] | None = None
        self.adapters: dict[str, bool] = {}  # name -> trainable
        self._targets: list[str] | None = None
        self.sharded = False  # set by lit_rlhf.distributed.shard_backbone (FSDP2)
        self._trunk_split = None  # TrunkSplit, False (not supported), or None (not looked up yet)
        self._trunk_state = None  # the lower layers' output inside `shared_trunk`

    @classmethod
    def build(
        cls,
        cfg: BackboneConfig,
        weights_dir: str | Path | None = None,
        tokenizer_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        quantize: bool = True,
    ) -> Backbone:
        """Load tokenizer and base per `cfg` (see `build_base`)."""
        if weights_dir is None:  # a stage's own base/ is already known-good; its cfg may name a config
            cfg.validate()
        if tokenizer_dir is not None:
            tok = load_tokenizer(str(tokenizer_dir), None, cfg.trust_remote_code)
        else:
            tok = load_config_tokenizer(cfg)
        model, source = build_base(cfg, tok, weights_dir=weights_dir, device=device, quantize=quantize)
        return cls(model, tok, cfg, source)

    # ---- structure ------------------------------------------------------------------------------------
    def upper_layers(self) -> list[int] | None:
        """Indices of the decoder layers that train (`top_layers`), None for all."""
        top = self.cfg.top_layers
        if top is None:
            return None
        n = num_layers(self.hf_model)
        if not 1 <= top <= n:
            raise ValueError(f"backbone.top_layers is {top}, but the model has {n} decoder layers")
        return list(range(n - top, n))

    @property
    def trunk(self):
        """The `TrunkSplit` of this model when only its top layers train, else None (also for unsupported shapes)."""
        saves_modules = self.cfg.lora is not None and bool(self.cfg.lora.modules_to_save)
        if (
            self._trunk_split is None
            and self.cfg.top_layers is not None
            and not self.sharded
            and not saves_modules
        ):
            # (adapters that train their own embeddings make even the lowest layers differ per role)
            from lit_rlhf.backbone.trunk import TrunkSplit

            n = num_layers(self.hf_model)
            split = (
                TrunkSplit.for_model(self.hf_model, self.cfg.top_layers) if self.cfg.top_layers < n else None
            )
            if split is None:
                log.info(
                    "shared trunk: %s is not a supported decoder shape, or every layer trains; full forward passes",
                    type(self.hf_model).__name__,
                )
            self._trunk_split = split if split is not None else False
        return self._trunk_split or None

    @contextlib.contextmanager
    def shared_trunk(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        hidden: Tensor | None = None,
    ) -> Iterator[bool]:
        """Inside the block, passes over exactly these tensors run only the top layers: the frozen lower layers are
        computed once here (no gradient), or taken from `hidden`, (B, L, H), a `trunk_hidden` kept from an earlier
        block over the same rows. Yields whether the trunk is shared (False: full passes as usual)."""
        split = self.trunk
        if split is None:
            yield False
            return
        previous = self._trunk_state
        if hidden is None:
            self._trunk_state = split.lower(input_ids, attention_mask, position_ids)
        else:
            from lit_rlhf.backbone.trunk import TrunkState

            if hidden.shape[:2] != input_ids.shape:
                raise ValueError(
                    f"kept trunk hidden states are {tuple(hidden.shape)}, the ids {tuple(input_ids.shape)}"
                )
            self._trunk_state = TrunkState(input_ids, attention_mask, position_ids, hidden)
        try:
            yield True
        finally:
            self._trunk_state = previous

    @property
    def trunk_hidden(self) -> Tensor | None:
        """Inside `shared_trunk`: the lower layers' output (B, L, H) (no gradient), to hand to a later block over
        the same rows (or a subset, indexed alike) instead of computing it again; None outside or without a trunk."""
        return None if self._trunk_state is None else self._trunk_state.hidden

    def _trunk_serves(self, input_ids: Tensor, attention_mask: Tensor | None) -> bool:
        state = self._trunk_state
        return state is not None and state.serves(input_ids, attention_mask)

    @property
    def text_format(self) -> TextFormat:
        """The tokenizer with this model's prompt format: how every stage renders prompts and responses."""
        key = (id(self.tokenizer), self.prompt_format.to_dict())
        if self._text_format is None or self._text_format[0] != key:
            self._text_format = (key, TextFormat(self.tokenizer, self.prompt_format))
        return self._text_format[1]

    @property
    def hf_model(self) -> nn.Module:
        """The underlying transformers model (LoRA layers injected in place when adapters exist)."""
        return self.model.get_base_model() if self.adapters else self.model

    @property
    def hidden_size(self) -> int:
        c = self.hf_model.config
        return int(getattr(c, "hidden_size", None) or c.n_embd)

    @property
    def is_quantized(self) -> bool:
        return getattr(self.hf_model, "is_quantized", False) or self.cfg.quantization != "none"

    def add_adapter(self, name: str, trainable: bool = True, state: dict[str, Tensor] | None = None) -> None:
        """Attach a LoRA adapter called `name`, optionally loading its weights (peft state-dict keys)."""
        from peft import get_peft_model, set_peft_model_state_dict

        if self.cfg.lora is None:
            raise ValueError(f"cannot add adapter {name!r}: backbone.lora is not set (full fine-tuning)")
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists")
        if self._targets is None:
            self._targets = self.cfg.lora.target_modules or detect_lora_targets(self.model)
        config = lora_config(self.cfg.lora, self._targets, self.upper_layers())
        if not self.adapters:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)
        if state is not None:
            result = set_peft_model_state_dict(self.model, state, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
            if missing or result.unexpected_keys:
                raise ValueError(
                    f"adapter {name!r} weights do not fit this base: missing {missing[:3]}, "
                    f"unexpected {list(result.unexpected_keys)[:3]}"
                )
        self.adapters[name] = trainable
        self.use_adapter_(name)

    def adapter_state(self, name: str, model_state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The adapter's weights with peft's name-free keys (what `add_adapter(state=...)` takes).

        Args:
            model_state: ``self.model``'s state dict with whole tensors, when the live parameters are shards.
        """
        from peft import get_peft_model_state_dict

        return {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(
                self.model, state_dict=model_state, adapter_name=name
            ).items()
        }

    def _refresh_requires_grad(self) -> None:
        # peft's set_adapter marks the active adapter trainable and the others frozen; we want each adapter's
        # own setting whatever is active (the policy stays trainable while the critic runs).
        for pname, p in self.model.named_parameters():
            if not is_adapter_parameter(pname):
                continue
            owner = next((a for a in self.adapters if f".{a}." in pname), None)
            p.requires_grad_(bool(owner and self.adapters[owner]))

    def use_adapter_(self, name: str) -> None:
        """Make `name` the active adapter (stays active until changed)."""
        if name not in self.adapters:
            raise KeyError(f"no adapter {name!r}; have {sorted(self.adapters)}")
        self.model.set_adapter(name)
        self._refresh_requires_grad()

    @contextlib.contextmanager
    def use_adapter(self, name: str | None) -> Iterator[None]:
        """Run a block with adapter `name` active, or with every adapter off when `name` is None."""
        if not self.adapters:
            if name is not None:
                raise KeyError(f"no adapter {name!r}: this backbone has no adapters")
            yield
            return
        previous = self.model.active_adapter
        if name is None:
            with self.model.disable_adapter():
                yield
            self._refresh_requires_grad()
            return
        self.use_adapter_(name)
        try:
            yield
        finally:
            self.use_adapter_(previous)

    def add_head(
        self, name: str, state: dict[str, Tensor] | None = None, outputs: Sequence[str] | None = None
    ) -> ScalarHead | MultiLabelHead:
        """Attach a head reading the last hidden state: scalar (reward, value), or one logit per name of `outputs`
        (rule heads)."""
        head = ScalarHead(self.hidden_size) if outputs is None else MultiLabelHead(self.hidden_size, outputs)
        if state is not None:
            head.load_state_dict(state)
        self.heads[name] = head
        return head

    # ---- parameters -----------------------------------------------------------------------------------
    def base_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters of the base model itself (no adapter, no head)."""
        for n, p in self.model.named_parameters():
            if not is_adapter_parameter(n):
                yield n, p

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if is_adapter_parameter(n) and f".{name}." in n]

    # ---- compute --------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Next-token logits (B, T, V) from the active adapter (float32 from the top layers inside `shared_trunk`)."""
        if self._trunk_serves(input_ids, attention_mask):
            return output_logits(self.hf_model, self.hidden_states(input_ids, attention_mask, position_ids))
        # No KV cache outside generation: it costs memory, and transformers only isolates packed sequences (from
        # position_ids restarting at 0, with attention_mask=None) when there is none.
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.logits

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """Last-layer hidden states (B, T, H) without computing the vocabulary projection."""
        if self._trunk_serves(input_ids, attention_mask):
            return self.trunk.upper(self._trunk_state)
        hf = self.hf_model
        if self.sharded:
            # FSDP2 gathers the embeddings and final norm in the root's pre-forward hook, so the call must enter
            # through the root; logits_to_keep=1 keeps the vocabulary projection to one position.
            out = hf(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=False,
            )
            return out.hidden_states[-1]
        decoder = getattr(hf, hf.base_model_prefix)
        out = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def target_logits(
        self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, keep: Tensor
    ) -> Tensor:
        """Next-token logits at the positions `keep` marks only: (B, T) inputs, (B, T) bool -> (N, V), N =
        keep.sum(), in row-major order, as the model's own forward computes them (bf16 under bf16 autocast).

        A loss on response tokens needs the vocabulary projection at those positions only: on a small model with a
        large vocabulary (SmolLM2: 49,152 x 576) it is the largest matmul of the forward and its logits the largest
        activation, and most of an SFT row is prompt.
        """
        if self.sharded:  # FSDP2: the output layer runs inside the root's forward (see hidden_states)
            return self(input_ids, attention_mask, position_ids)[keep]
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)[keep]  # (N, H)
        return output_logits(self.hf_model, hidden, float32=False)

    def response_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        start: int,
    ) -> Tensor:
        """Float32 predictions of tokens ``start .. L-1`` from the active adapter: (B, L) -> (B, L - start, V).

        Only the response slice goes through the vocabulary projection, in float32 (`output_logits`), so
        log-probabilities under bf16 autocast are not rounded to bf16. Under FSDP2 the output layer is a shard
        outside the root's forward, so the model's own logits are used there, cast to float32.
        """
        if start < 1:
            raise ValueError(f"start must be >= 1 (token 0 has no prediction), got {start}")
        if self.sharded:
            return self(input_ids, attention_mask, position_ids)[:, start - 1 : -1].float()
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)[:, start - 1 : -1]  # (B, R, H)
        return output_logits(self.hf_model, hidden)

    def response_logprobs(self, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
        """log pi(token) of every token from `prompt_len` on, under the active adapter: (B, L) -> (B, L - P) fp32.

        Positions skip left padding (as in `generate`), and the vocabulary projection runs in float32
        (`response_logits`), so these are the log-probabilities of the distribution the tokens were sampled from.
        """
        from lit_rlhf.rl.logprobs import response_logprobs

        logits = self.response_logits(
            input_ids, attention_mask, position_ids_from_mask(attention_mask), prompt_len
        )
        return response_logprobs(logits, input_ids, prompt_len)

    def score(
        self, head: str, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
    ) -> Tensor:
        """Head `head` at the last real token of each row: (B, T) ids -> (B,) float32, or (B, R) for a
        multi-label head."""
        return self.score_heads((head,), input_ids, attention_mask, position_ids)[head]

    def score_shared_prefix(self, heads: Sequence[str], rows: SharedPrefixRows) -> dict[str, Tensor]:
        """Heads at each sequence's last token from one row per prompt (`pack_shared_prefix`: the prompt once,
        then each response): name -> (N,) or (N, R) float32, the same values as `score_heads` on the N sequences.

        The rows go to the decoder with a 4D attention mask, which transformers takes as given for SDPA (bool) and
        eager attention (additive); other attention kernels (flash attention) cannot take one and are refused.
        """
        impl = getattr(self.hf_model.config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            raise ValueError(
                f"shared_prefix scoring needs SDPA or eager attention (a 4D attention mask); "
                f"{type(self.hf_model).__name__} uses {impl!r}"
            )
        mask = shared_prefix_mask(rows.segments, None if impl == "sdpa" else self.hf_model.dtype)
        hidden = self.hidden_states(rows.input_ids, mask, rows.position_ids)  # (G, T, H)
        last = hidden[rows.last[:, 0], rows.last[:, 1]]  # (N, H)
        return {name: self.heads[name](last) for name in heads}

    def score_heads(
        self,
        heads: Sequence[str],
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Several heads at the last real token of each row from ONE forward pass (the reward and rule heads read
        the same trunk): name -> (B,) or (B, R) float32."""
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, H)
        idx = last_token_index(attention_mask)  # (B,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)
        return {name: self.heads[name](last) for name in heads}
