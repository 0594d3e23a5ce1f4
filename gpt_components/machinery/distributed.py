"""Data-parallel strategies under ``torchrun`` (appendix D): replicate with DDP or shard with FSDP2.

Both split every global batch across the processes and give the same training run as one process
reading the whole batch; they differ in what each process holds.

- ``"ddp"``: ``DistributedDataParallel``. Every process keeps the whole model, its gradients and
  the optimizer state; gradients are averaged after each backward pass.
- ``"fsdp"``: fully sharded data parallel (``torch.distributed.fsdp.fully_shard``, FSDP2). Each
  transformer block, and then the rest of the model, is cut into one shard per process: a process
  keeps 1/N of the weights, gradients and optimizer state, gathers a block's full weights just
  before using it and frees them after, and reduce-scatters the gradients. This is what lets a
  model whose training state does not fit one GPU (Llama 3.2 3B on a 24 GB card) train on several.

``parallelize`` wraps a model for its strategy; ``full_state`` gathers the whole weights and
optimizer state for a checkpoint (a collective: every process calls it); ``load_optimizer_state``
puts a checkpoint's optimizer state back into a sharded or unsharded optimizer.

>>> import torch
>>> model = torch.nn.Linear(3, 2)
>>> parallelize(model, "ddp", torch.device("cpu"), world=1) is model  # one process: as it is
True
>>> optimizer = torch.optim.AdamW(model.parameters())
>>> weights, state = full_state(model, optimizer, "ddp")
>>> sorted(weights), sorted(state)
(['bias', 'weight'], ['param_groups', 'state'])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .checks import check_choice

__all__ = ["STRATEGIES", "parallelize", "is_sharded", "full_state", "load_optimizer_state"]

STRATEGIES = ("ddp", "fsdp")


def check_strategy(strategy: object) -> None:
    check_choice("strategy", strategy, STRATEGIES)


def is_sharded(model: nn.Module) -> bool:
    """True once ``fully_shard`` has been applied to ``model`` (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def parallelize(model: nn.Module, strategy: str, device: torch.device, *, world: int,
                compile: bool = False) -> nn.Module:
    """The module to train: ``model`` wrapped for ``strategy`` when ``world > 1``.

    ``"fsdp"`` shards ``model`` in place (one FSDP unit per block of ``model.trf_blocks``, then
    the root with the embeddings, final norm and head), so ``model`` itself becomes the sharded
    module and an optimizer must be built after this call. ``"ddp"`` returns a DDP wrapper
    around ``model``. ``compile`` applies ``torch.compile`` (after sharding, before DDP).
    """
    check_strategy(strategy)
    if world > 1 and strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # FSDP2 shards flat storage: a model in eval mode keeps some weights column-major for
        # fast decoding (language_model.lay_out_blocks); they are made row-major, as training mode
        # keeps them (values do not change). train()/eval() then leave the shards alone.
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.is_contiguous():
                    parameter.data = parameter.data.contiguous()
        for block in getattr(model, "trf_blocks", ()):
            fully_shard(block)
        fully_shard(model)
    wrapped = torch.compile(model) if compile else model
    if world > 1 and strategy == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
               strategy: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, optimizer state) of the whole model, for a checkpoint.

    Unsharded: ``state_dict()`` of both. Sharded: gathered from every process (all must call
    this) onto the CPU of rank 0, the others get empty dicts; the optimizer state is keyed by
    parameter name (``get_optimizer_state_dict``'s format), which ``load_optimizer_state`` reads.
    """
    check_strategy(strategy)
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state, whichever of ``full_state``'s formats it has.

    A sharded optimizer takes the name-keyed format only (a DDP or one-process checkpoint raises
    a ValueError saying so); an unsharded one takes both, so a sharded run resumes under DDP or
    in one process too.
    """
    by_name = any(isinstance(p, str) for group in state.get("param_groups", ())
                  for p in group["params"])
    if is_sharded(model):
        if not by_name:
            raise ValueError("the checkpoint's optimizer state was saved without sharding "
                             "(strategy 'ddp' or one process): resume it with strategy 'ddp'")
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(_numbered(model, optimizer, state) if by_name else state)


def _numbered(model: nn.Module, optimizer: torch.optim.Optimizer,
              state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state in ``optimizer.state_dict()``'s numbered format."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    if len(optimizer.param_groups) != len(state["param_groups"]):
        raise ValueError(f"the checkpoint's optimizer has {len(state['param_groups'])} parameter "
                         f"groups, this one {len(optimizer.param_groups)}")
    numbered, groups, index = {}, [], 0
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        ids = []
        for parameter in group["params"]:
            found = [n for n in names.get(id(parameter), []) if n in saved["params"]]
            if not found:
                raise ValueError(f"the checkpoint's optimizer state has no entry for parameter "
                                 f"{names.get(id(parameter), ['?'])[0]!r}")
            if found[0] in state["state"]:
                numbered[index] = state["state"][found[0]]
            ids.append(index)
            index += 1
        groups.append({**saved, "params": ids})
    return {"state": numbered, "param_groups": groups}
