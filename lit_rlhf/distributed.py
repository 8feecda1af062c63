"""Everything distributed in one place: the FSDP2 strategy and its checks, sharding the shared backbone, the
collectives that gather whole tensors or keep layers gathered, and evaluation sampling across ranks.

FSDP2 (``torch.distributed.fsdp.fully_shard``) runs through Lightning's ModelParallelStrategy. What gets sharded:
every decoder layer is its own group (found by the model's ``_no_split_modules`` classes), the transformers model
is the root group (embeddings, final norm, tied or untied output layer), and each scalar head is a group of its
own. LoRA adapters live inside the layers they adapt, so they shard with them; frozen and trainable parameters may
share a group.

Three things change once parameters are sharded, and the stage modules handle them through this module:

- every forward must enter through the root (its pre-forward hook gathers the embeddings): `Backbone.hidden_states`
  then asks the root for its hidden states instead of calling the decoder directly;
- generation is a collective: every rank generates (the same number of calls), with transformers' ``synced_gpus``
  so a rank that finished early keeps stepping until all have;
- writing a stage directory needs whole tensors: `full_state` gathers them onto rank zero's CPU.

The FSDP2 flags live on the modules: ``Backbone.sharded`` (set by `shard_backbone`) and the root's
``_lit_rlhf_gather_for_generation`` (read by `gathered_for_generation`). This module imports the backbone only
inside functions and for type hints: `lit_rlhf.backbone` and `lit_rlhf.data` both import it, never the reverse.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

if TYPE_CHECKING:
    from lit_rlhf.backbone.build import Backbone


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy set up for pure FSDP2: one data-parallel dimension over all processes.

    ``strategy: fsdp2`` in a config (registered below). ModelParallelStrategy's own defaults put every GPU of a node
    into a tensor-parallel group, which lit-rlhf does not use.

    Args:
        save_distributed_checkpoint: True (default): each rank writes its shard of weights and optimizer state
            into the ``.ckpt`` folder (no rank holds the whole model); False: rank zero assembles one file.
        process_group_backend: e.g. ``gloo`` for CPU processes; default: nccl on CUDA, gloo on CPU.
        gather_for_generation: Keep every layer gathered for a whole ``generate`` call instead of gathering each
            layer again at every decoding step (2.4x faster on 2 CPU processes, bench/fsdp2_generation.py); costs
            the whole model's parameters in memory while generating. False: gather per step, for models whose full
            parameters do not fit one device.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        gather_for_generation: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )
        self.gather_for_generation = gather_for_generation

    def setup_environment(self) -> None:
        # "auto" would mean one data-parallel group per node; here every process is a data-parallel rank
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Write a distributed checkpoint folder atomically: every rank fills a hidden sibling, then one rename.

        Lightning writes the shards into ``last.ckpt/`` in place, so a crash mid-write would leave a folder that
        looks like a checkpoint, and would already have destroyed the previous good one.
        """
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        import uuid
        from pathlib import Path

        from lit_rlhf.atomic import replace_dir, temp_sibling

        path = Path(self.broadcast(str(filepath)))
        tmp = temp_sibling(path, self.broadcast(uuid.uuid4().hex[:8]))
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()  # every rank's shard is on disk
        if self.global_rank == 0:
            replace_dir(tmp, path)
        self.barrier()


def register_strategy() -> None:
    """Make ``strategy: fsdp2`` (and ``--trainer.strategy fsdp2``) name `FSDP2Strategy`."""
    from lightning.pytorch.strategies import StrategyRegistry

    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register(
            "fsdp2", FSDP2Strategy, description="FSDP2 data parallelism for lit-rlhf's backbone"
        )


def uses_fsdp2(strategy: Any) -> bool:
    """True for Lightning's ModelParallelStrategy (and so `FSDP2Strategy`)."""
    return isinstance(strategy, ModelParallelStrategy)


def check_data_parallel_only(strategy: Any, stage: str) -> None:
    """Refuse a ModelParallelStrategy mesh with tensor parallelism: lit-rlhf shards data-parallel only."""
    mesh = strategy.device_mesh
    tp = mesh["tensor_parallel"].size() if "tensor_parallel" in (mesh.mesh_dim_names or ()) else 1
    if tp != 1:
        raise ValueError(
            f"{stage}: ModelParallelStrategy with tensor_parallel_size={tp}: lit-rlhf shards parameters with FSDP2 "
            "only. Use strategy: fsdp2, or ModelParallelStrategy(tensor_parallel_size=1)"
        )


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: instances of the model's ``_no_split_modules`` classes.

    Raises:
        ValueError: the architecture names no such classes, or none is found (sharding the whole model as one group
            would gather every parameter at once: no memory saved).
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__}: cannot find its decoder layers to shard (no _no_split_modules classes "
            f"{sorted(names)} in the model); FSDP2 needs one group per layer"
        )
    return layers


def shard_backbone(net: Backbone, mesh: Any, gather_for_generation: bool = True) -> int:
    """Apply FSDP2 to `net` in place; returns the number of groups.

    Gathered parameters are freed after each layer's forward (ZeRO-3 style) and gathered again for its backward.

    Args:
        net: The backbone with its adapters and heads already attached (sharding freezes the module structure).
        mesh: A 1-D device mesh (the data-parallel dimension).
        gather_for_generation: See `FSDP2Strategy`; read by `gathered_for_generation`.
    """
    from torch.distributed.fsdp import fully_shard

    if net.is_quantized:
        raise ValueError(
            "FSDP2 with a bitsandbytes-quantized base is not supported: shard a bf16 base (strategy: fsdp2, "
            "backbone.quantization: none), or keep the 4-bit base whole on each GPU with strategy: ddp"
        )
    hf = net.hf_model
    layers = decoder_layers(hf)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(hf, mesh=mesh, reshard_after_forward=True)
    for head in net.heads.values():
        fully_shard(head, mesh=mesh, reshard_after_forward=True)
    hf._lit_rlhf_gather_for_generation = gather_for_generation
    net.sharded = True
    # FSDP2 warns whenever a sharded module returns a view (hidden states, a head's squeezed score), because an
    # in-place op on it would skip the backward all-gather. lit-rlhf never modifies model outputs in place; the
    # DDP-vs-FSDP2 checks (scripts/ddp_check.py --stage fsdp2) would show wrong gradients if it did.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return len(layers) + 1 + len(net.heads)


def is_sharded(module: nn.Module) -> bool:
    """True when `module` (a Backbone, a PeftModel or a transformers model) has FSDP2-sharded parameters."""
    from lit_rlhf.backbone.build import Backbone

    if isinstance(module, Backbone):
        return module.sharded
    from torch.distributed.fsdp import FSDPModule

    inner = module.get_base_model() if hasattr(module, "get_base_model") else module
    return isinstance(inner, FSDPModule)


@contextlib.contextmanager
def gathered_for_generation(model: nn.Module) -> Iterator[None]:
    """Inside the block, sharded layers stay gathered between forward passes (one all-gather per layer per
    ``generate`` call instead of one per decoding step); on exit they are freed again. A no-op for a model that is
    not sharded, or was sharded with ``gather_for_generation=False``."""
    from torch.distributed.fsdp import FSDPModule

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, FSDPModule) or not getattr(inner, "_lit_rlhf_gather_for_generation", False):
        yield
        return
    # the root is left alone: FSDP2 already keeps the root's parameters after its forward
    layers = [m for m in inner.modules() if isinstance(m, FSDPModule) and m is not inner]
    for m in layers:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in layers:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def full_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `net`, whole, on rank zero's CPU; an empty dict on the other ranks.

    A collective: every rank must call it. Keys are `net.state_dict()`'s.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def eval_sampler(dataset: Any, trainer: Any) -> Sampler | None:
    """A sampler that splits `dataset` across ranks WITHOUT repeating items, or None on one process.

    Lightning's default DistributedSampler pads the evaluation set with copies of its first items so every rank
    gets the same count; metrics reduced across ranks then count those copies (a 2-process RM accuracy differed
    from the 1-process one on the same data). Ranks may get unequal counts instead; our metrics are weighted
    sums (torchmetrics), so the reduction stays exact.

    Under FSDP2 every forward pass is a collective (it gathers each layer's shards from all ranks), so ranks must
    run the same number of batches: there every rank evaluates every item. The metrics are ratios of sums, which
    W identical copies leave unchanged; the cost is validation compute that is not split across ranks.
    """
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    if uses_fsdp2(trainer.strategy):
        # a one-replica DistributedSampler is every item in order; a plain sampler would be swapped by Lightning for
        # its padding DistributedSamplerWrapper (equal counts again, but with duplicates in the metrics)
        return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
