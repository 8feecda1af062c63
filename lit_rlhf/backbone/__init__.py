"""The shared backbone: one base causal LM, quantization, named LoRA adapters and scalar heads.

Only this package imports bitsandbytes and peft. Import the heavy parts from their modules
(`lit_rlhf.backbone.build`); this file stays import-light for the CLI.
"""

from lit_rlhf.backbone.config import BackboneConfig, LoraSettings

__all__ = ["BackboneConfig", "LoraSettings"]
