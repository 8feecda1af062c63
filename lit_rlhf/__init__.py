"""lit-rlhf: InstructGPT-style RLHF on PyTorch Lightning."""

__version__ = "0.1.0"
