"""Pretraining (chapter 5 and appendix D): losses, the schedule, the optimizer and the loop.

- ``calc_loss_batch``, ``calc_loss_loader``, ``evaluate``, ``perplexity``: the book's helpers.
- ``lr_at``: linear warm-up to the peak rate, then cosine decay to a minimum rate.
- ``configure_optimizer``: AdamW decaying matrices only (not biases, norms or embeddings).
- ``train_step``: gradient accumulation over micro-batches, clipping, one optimizer step.
- ``train``: the loop. Everything random is a function of the seed and the step: the window
  order of epoch ``e`` is a permutation drawn from ``seed`` and ``e``, and dropout reseeds from
  ``(seed, step, rank)`` before each step. A checkpoint therefore needs only the weights, the
  optimizer state and the step to resume a run bit for bit, on one process or under
  ``torchrun`` (each rank reads its own slice of every global batch; only rank 0 writes), with
  DDP or FSDP2 (``TrainConfig.strategy``, see ``distributed``).
  The run directory is locked (``lock_run``) while ``train`` runs; a first Ctrl-C or SIGTERM
  finishes the step, saves a checkpoint there and raises ``TrainingInterrupted``, a second
  aborts at once (``stop_on_signals``).
- ``check_grad_clip``: the one check of a clipping limit, for every loop that clips.

>>> import torch
>>> lr_at(0, peak_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100)
0.00019
>>> lr_at(9, peak_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100)
0.001
>>> lr_at(99, peak_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100)
0.0001
>>> round(perplexity(torch.tensor(2.0)), 4)
7.3891
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .corpus import TokenWindows
from .machinery.checkpoint import (
    NonFiniteStateError,
    latest_checkpoint,
    load_checkpoint,
    lock_run,
    save_checkpoint,
)
from .machinery.checks import (
    check_bool,
    check_float,
    check_int,
    type_error,
    value_error,
)
from .machinery.distributed import (
    check_strategy,
    full_state,
    is_sharded,
    load_optimizer_state,
    parallelize,
)
from .machinery.metrics import append_metrics, plot_losses, read_metrics, start_metrics
from .machinery.rundir import steps_per_epoch, total_steps

__all__ = [
    "calc_loss_batch",
    "calc_loss_loader",
    "evaluate",
    "perplexity",
    "lr_at",
    "configure_optimizer",
    "train_step",
    "train",
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "check_grad_clip",
    "stop_on_signals",
]


class TrainingDivergedError(RuntimeError):
    """The loss, the weights or the optimizer state became NaN or infinite; names the step."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``signal``) stopped a loop after ``step``; ``train`` saved the
    checkpoint ``checkpoint``, a finetuning loop leaves ``records`` for its caller to save."""

    def __init__(self, step: int, checkpoint: Path | None, signal: str = "SIGINT",
                 records: list[dict] | None = None):
        saved = f"; saved checkpoint {str(checkpoint)!r}" if checkpoint is not None else ""
        super().__init__(f"stopped by {signal} after step {step}{saved}")
        self.step, self.checkpoint, self.signal = step, checkpoint, signal
        self.records = records or []


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device | str) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch (inputs and targets: (B, T) token ids).

    A model in training mode with an ``auxiliary_loss()`` (a mixture of experts' load
    balancing) has it added; evaluation is the cross-entropy alone.
    """
    for name, batch in (("input_batch", input_batch), ("target_batch", target_batch)):
        if not isinstance(batch, torch.Tensor) or batch.is_floating_point() or batch.is_complex():
            raise type_error(name, f"{name} must be a tensor of integer token ids, got "
                            f"{getattr(batch, 'dtype', type(batch).__name__)}")
    if target_batch.shape != input_batch.shape:
        raise value_error("target_batch", f"target_batch must have input_batch's shape "
                                          f"{tuple(input_batch.shape)}, got "
                                          f"{tuple(target_batch.shape)}")
    vocab_size = _vocab_size(model)
    if vocab_size is not None and target_batch.device.type == "cpu":
        _check_targets(target_batch, vocab_size)  # before the copy: no device sync
        vocab_size = -1
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (B, T, V)
    if vocab_size != -1:
        _check_targets(target_batch, logits.shape[-1])
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: take the softmax in fp32
        logits = logits.float()
    loss = F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())
    # A mixture of experts adds its routers' load-balancing loss while it trains.
    auxiliary = getattr(getattr(model, "module", model), "auxiliary_loss", None)
    extra = auxiliary() if auxiliary is not None and model.training else None
    return loss if extra is None else loss + extra


def _vocab_size(model: nn.Module) -> int | None:
    """The model's vocabulary, looking through DDP and torch.compile wrappers."""
    for inner in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        size = getattr(getattr(inner, "cfg", None), "vocab_size", None)
        if isinstance(size, int):
            return size
    return None


def _check_targets(targets: torch.Tensor, vocab_size: int) -> None:
    """Ids in [0, vocab_size), or -100 (cross-entropy's ignore_index, as finetuning pads)."""
    bad = (targets >= vocab_size) | ((targets < 0) & (targets != -100))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise value_error("target_batch", f"target_batch holds token id {value}, outside [0, "
                                          f"vocab_size={vocab_size}) (and not the ignored -100)")


def check_grad_clip(grad_clip: Any) -> float | None:
    """``grad_clip`` if it is a finite float > 0 or None (no clipping); every loop that clips
    checks it here, before any work. A negative limit would flip every gradient (the clipping
    coefficient ``limit / norm`` turns negative) and 0 would freeze training."""
    return check_float("grad_clip", grad_clip, low=0, low_open=True, optional=True)


def _check_run_settings(cfg: Any) -> None:
    """The ``TrainConfig`` fields the other checks leave: seed, stride, sample and switches."""
    check_int("seed", cfg.seed, low=0)
    check_int("sample_tokens", cfg.sample_tokens, low=0)
    check_int("stride", cfg.stride, low=1, optional=True)
    check_bool("compile", cfg.compile)
    check_bool("bf16", cfg.bf16)
    check_float("weight_decay", cfg.weight_decay, low=0)


def _check_windows(model: nn.Module, train_tokens: Any, val_tokens: Any,
                   context_length: int) -> None:
    """Windows of ``context_length`` fit the model, and the validation split holds one."""
    check_int("context_length", context_length, low=1)
    limit = getattr(getattr(model, "cfg", None), "context_length", None)
    if limit is not None and context_length > limit:
        raise value_error("context_length", f"context_length must be <= the model's "
                                            f"context_length={limit}, got {context_length}")
    if len(val_tokens) < context_length + 1:
        raise value_error("val_fraction",
                          f"val_fraction leaves the validation split {len(val_tokens)} tokens, "
                          f"fewer than one window (context_length + 1 = {context_length + 1}): "
                          "raise val_fraction, lower the context length or use a longer corpus")


def calc_loss_loader(data_loader: Any, model: nn.Module, device: torch.device | str,
                     num_batches: int | None = None) -> float:
    """Average batch loss over the first ``num_batches`` batches (all if None; NaN if empty)."""
    if num_batches is not None:
        check_int("num_batches", num_batches, low=1)
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate(model: nn.Module, train_loader: Any, val_loader: Any, device: torch.device | str,
             eval_iter: int) -> tuple[float, float]:
    """(train loss, validation loss) over ``eval_iter`` batches each, in eval mode, no grad."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train(was_training)
    return train_loss, val_loss


def perplexity(loss: float | torch.Tensor) -> float:
    """exp(cross-entropy): the effective number of equally likely next tokens."""
    value = loss.item() if isinstance(loss, torch.Tensor) and loss.numel() == 1 else loss
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error("loss", f"loss must be a number or a one-element tensor, got {loss!r}")
    if math.isnan(value):
        raise value_error("loss", "loss must be a number, got NaN (an empty loader or a "
                                  "diverged run)")
    return math.exp(value)


def lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int,
          total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up reaches ``peak_lr`` at step ``warmup_steps - 1``; cosine decay then ends at
    ``min_lr`` on the last step, ``total_steps - 1``; never below ``min_lr``.
    """
    check_int("step", step, low=0)
    check_int("warmup_steps", warmup_steps, low=0)
    check_int("total_steps", total_steps, low=1)
    check_float("peak_lr", peak_lr, low=0, low_open=True)
    check_float("min_lr", min_lr, low=0, high=peak_lr)
    if step < warmup_steps:
        return min_lr + (peak_lr - min_lr) * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with ``weight_decay`` on weight matrices only; biases, norms, embeddings: none.

    A tied output head is the embedding's own parameter, so it is not decayed either. Where
    torch has it (CPU, CUDA), the fused AdamW kernel updates each tensor in one pass instead of
    the half-dozen passes of the ``foreach`` form: the same update, and on the CPU about 10% of
    a small model's training step saved (``benchmarks/README.md``).
    """
    check_float("lr", lr, low=0, low_open=True)
    check_float("weight_decay", weight_decay, low=0)
    _check_betas(betas)
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                 for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    params = decay + no_decay
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for p in params)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    if fused:
        optimizer.register_step_pre_hook(_lay_out_as_parameters)
    return optimizer


def _check_betas(betas: Any) -> None:
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                       and 0.0 <= b < 1.0 for b in betas)):
        raise value_error("betas", f"betas must be two numbers in [0, 1), got {betas!r}")


def _lay_out_as_parameters(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Give each gradient and moment its parameter's memory order before a fused step.

    torch's fused AdamW reads a parameter, its gradient and its moments as flat arrays, so a
    tensor laid out differently from its parameter is silently updated with the wrong
    elements. That happens when the layout changes between steps: the models keep some weights
    column-major in eval mode and row-major in training mode
    (``language_model.lay_out_blocks``), and
    moments keep the layout of the step that made them (or of the checkpoint they came from).
    Copying one into its parameter's order changes no value; usually nothing needs it.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.stride() != p.stride():
                p.grad = torch.empty_like(p).copy_(p.grad)
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == p.shape
                        and value.stride() != p.stride()):
                    state[key] = torch.empty_like(p).copy_(value)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               micro_batches: Sequence[Any], device: torch.device | str,
               *, grad_clip: float | None = None, autocast_dtype: torch.dtype | None = None,
               step: int = 0,
               loss_fn: Callable[[nn.Module, Any, torch.device], torch.Tensor] | None = None,
               ) -> tuple[float, float]:
    """One optimizer step over ``k`` micro-batches: returns (mean loss, global grad norm).

    Each micro-batch contributes ``loss / k``, so k micro-batches of B windows give the
    gradient of one batch of k*B. The norm is taken before clipping to ``grad_clip``. A
    non-finite loss raises ``TrainingDivergedError`` before the weights change. A micro-batch
    is an ``(inputs, targets)`` pair for ``calc_loss_batch``, or anything ``loss_fn(model,
    micro_batch, device)`` turns into a scalar loss (the finetuning tasks pass their own).
    """
    check_grad_clip(grad_clip)
    if not micro_batches:
        raise value_error("micro_batches", "micro_batches must hold at least one (inputs, "
                                           "targets) pair")
    device = torch.device(device)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not _is_ddp(model) else model.no_sync()
        cast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
        with sync:
            with cast:
                if loss_fn is None:
                    inputs, targets = batch
                    loss = calc_loss_batch(inputs, targets, model, device)
                else:
                    loss = loss_fn(model, batch, device)
            (loss / len(micro_batches)).backward()
        total += loss.detach()
    mean = (total / len(micro_batches)).double()
    if dist.is_initialized():  # gloo has no AVG: sum, then divide
        dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        mean /= dist.get_world_size()
    loss_value = mean.item()
    if not math.isfinite(loss_value):
        raise TrainingDivergedError(f"loss became {loss_value} at step {step}")
    params = [p for p in model.parameters() if p.grad is not None]
    limit = grad_clip if grad_clip is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit).item()
    optimizer.step()
    return loss_value, norm


@dataclass
class TrainConfig:
    """How to train; model shape lives in the model's own config."""

    batch_size: int = 8  # windows per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: int = 1  # used when max_steps is None
    max_steps: int | None = None  # optimizer steps in the whole run
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # the cosine ends here
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    val_fraction: float = 0.1  # the corpus' last tokens, held out
    stride: int | None = None  # between training windows; None = context length
    eval_interval: int = 50
    eval_iters: int = 5  # batches per evaluation
    checkpoint_interval: int = 100
    keep_checkpoints: int = 2
    seed: int = 123
    compile: bool = False
    bf16: bool = False  # autocast to bfloat16: CUDA only (slow emulation on most CPUs)
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 20
    strategy: str = "ddp"  # under torchrun: "ddp" replicates the model, "fsdp" shards it (FSDP2)
    extra: dict = field(default_factory=dict)  # recorded in checkpoints (model config, ...)

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "epochs", "eval_interval", "eval_iters",
                     "checkpoint_interval", "keep_checkpoints"):
            check_int(name, getattr(self, name), low=1)
        if self.max_steps is not None:  # None (the default) means "epochs decide"
            check_int("max_steps", self.max_steps, low=1)
        check_grad_clip(self.grad_clip)
        _check_betas(self.betas)
        check_float("val_fraction", self.val_fraction, low=0, high=1, low_open=True,
                    high_open=True)
        check_strategy(self.strategy)
        check_float("lr", self.lr, low=0, low_open=True)
        lr_at(0, peak_lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
              total_steps=1)
        _check_run_settings(self)


def _seed_for(seed: int, *parts: int) -> int:
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


class _Schedule:
    """Which windows each rank reads at each step: a fixed function of (seed, step, rank)."""

    def __init__(self, n_windows: int, cfg: TrainConfig, world: int):
        self.n, self.cfg, self.world = n_windows, cfg, world
        self.global_batch = cfg.batch_size * cfg.grad_accum * world
        self.steps_per_epoch = steps_per_epoch(n_windows, cfg.batch_size, cfg.grad_accum, world)
        self._perm: tuple[int, torch.Tensor] | None = None

    def total_steps(self) -> int:
        return total_steps(self.n, batch_size=self.cfg.batch_size, grad_accum=self.cfg.grad_accum,
                           epochs=self.cfg.epochs, max_steps=self.cfg.max_steps,
                           world=self.world)

    def position(self, step: int) -> dict[str, int]:
        return {"epoch": step // self.steps_per_epoch, "batch": step % self.steps_per_epoch}

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        epoch, batch = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(_seed_for(self.cfg.seed, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        b = self.cfg.batch_size
        start = batch * self.global_batch + (micro * self.world + rank) * b
        return self._perm[1][start : start + b].tolist()


def _sample(model: nn.Module, tokenizer: Any, prompt: str, n: int, context: int,
            device: torch.device) -> str:
    from .generation import generate

    idx = torch.tensor([tokenizer.encode(prompt)], device=device)
    out = generate(model, idx, max_new_tokens=n, context_size=context)
    return tokenizer.decode(out[0].tolist())


#: Under torchrun a Ctrl-C reaches each worker twice: from the terminal, which signals the whole
#: process group, and from torchrun, which forwards it. There, presses this close count as one.
SAME_PRESS_S = 1.0

#: The signals that ask a loop to stop after its step: Ctrl-C, and what a scheduler or a
#: container stop sends before it kills (handled alike: the step finishes, the work is saved).
STOP_SIGNALS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@contextlib.contextmanager
def stop_on_signals(same_press_s: float = 0.0) -> Any:
    """Yield a function returning the name of the first stop signal received (``"SIGINT"``,
    ``"SIGTERM"``), or ``None``; the first signal only asks to stop.

    A second one (more than ``same_press_s`` after the first) raises ``KeyboardInterrupt`` at
    once. Only the main thread can catch signals, and only a handler nobody replaced is
    replaced; otherwise a signal keeps its usual meaning.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    ours = [s for s, default in STOP_SIGNALS.items() if signal.getsignal(s) is default]
    received: list[tuple[str, float]] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            if time.monotonic() - received[0][1] >= same_press_s:
                for s in ours:
                    signal.signal(s, STOP_SIGNALS[s])
                raise KeyboardInterrupt
            return
        name = signal.Signals(signum).name
        received.append((name, time.monotonic()))
        again = "press Ctrl-C" if signum == signal.SIGINT else "send it"
        print(f"\n{'interrupted' if signum == signal.SIGINT else 'terminated'} ({name}): "
              f"stopping after this step to save what it has ({again} again to abort at once)",
              file=sys.stderr, flush=True)

    for s in ours:
        signal.signal(s, handler)
    try:
        yield lambda: received[0][0] if received else None
    finally:
        for s in ours:
            signal.signal(s, STOP_SIGNALS[s])


def _on_any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process of the group (every rank gets the same answer)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    # NCCL reduces device tensors only; gloo takes the CPU.
    where = device if dist.get_backend() == "nccl" else torch.device("cpu")
    seen = torch.tensor([int(flag)], device=where)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())


def train(
    model: nn.Module,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    context_length: int,
    device: torch.device | str = "cpu",
    tokenizer: Any = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    plot: bool = True,
) -> list[dict]:
    """Train ``model`` on windows of ``train_tokens``; returns the records of ``metrics.jsonl``.

    Writes checkpoints every ``cfg.checkpoint_interval`` steps and at the end, one metrics
    record per step (``step``, ``tokens_seen``, ``loss``, ``lr``, ``grad_norm``) and one per
    evaluation (``val_loss``, ``train_eval_loss``, ``sample`` when a tokenizer is given), and
    ``loss.png`` (unless ``plot`` is False). ``resume=True`` continues from the run's latest
    checkpoint, or from step 0 with ``model`` as given if the run stopped before its first. The
    learning-rate schedule is laid over ``cfg``'s total steps: a resume with a larger
    ``max_steps`` re-lays the cosine over the new total from the checkpoint's step on.

    Rank 0 holds the run directory's lock throughout (``RunLockedError`` if another process has
    it). Ctrl-C or SIGTERM (main thread; under torchrun every rank stops after the same step)
    stops after the step in progress, saves a checkpoint there and raises
    ``TrainingInterrupted``. Weights or optimizer state that become
    NaN or infinite raise ``TrainingDivergedError`` instead of being saved. Under an
    initialised ``torch.distributed`` group the model is wrapped in DDP.
    """
    cfg.validate()
    device = torch.device(device)
    if cfg.bf16 and device.type != "cuda":
        raise value_error("bf16", f"bf16 must be False on device {device.type!r}: bf16 autocast "
                                  "is for CUDA only (CPU emulation is far slower than float32)")
    run_dir = Path(run_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    _check_windows(model, train_tokens, val_tokens, context_length)
    windows = TokenWindows(train_tokens, context_length, cfg.stride)
    val_windows = TokenWindows(val_tokens, context_length, context_length)
    schedule = _Schedule(len(windows), cfg, world)
    with lock_run(run_dir) if rank == 0 else contextlib.nullcontext():
        records = _loop(model, windows, val_windows, schedule, cfg, run_dir, rank, world,
                        context_length, device, tokenizer, resume, progress, on_step)
        if rank == 0 and plot:
            plot_losses(records, run_dir / "loss.png")
    return records


def _loop(model: nn.Module, windows: TokenWindows, val_windows: TokenWindows,
          schedule: _Schedule, cfg: TrainConfig, run_dir: Path, rank: int, world: int,
          context_length: int, device: torch.device, tokenizer: Any, resume: bool,
          progress: bool, on_step: Callable[[dict], None] | None) -> list[dict]:
    total_steps = schedule.total_steps()
    model.to(device)
    step = 0
    ckpt = None
    if resume and latest_checkpoint(run_dir) is not None:
        ckpt = load_checkpoint(run_dir, map_location=str(device))
        saved_world = ckpt.meta.get("world_size", 1)
        if saved_world != world:  # the global batch, and so the order of the data, depend on it
            raise ValueError(f"world size must be the run's own, {saved_world} processes, to "
                             f"resume it exactly, got {world} (resume it with torchrun "
                             f"--nproc_per_node={saved_world}, or start a new run)"
                             if saved_world > 1 else
                             f"world size must be 1 to resume this run exactly, as it was "
                             f"trained by one process, got {world} (run it without torchrun, "
                             "or start a new run)")
        ckpt.load_into(model)  # names any tensor of the wrong name, shape or dtype
        step = ckpt.meta["step"]
    raw_model = model
    model = parallelize(model, cfg.strategy, device, world=world, compile=cfg.compile)
    sharded = is_sharded(raw_model)  # then every rank joins evaluations and checkpoints
    # After sharding: FSDP replaces the parameters the optimizer must hold.
    optimizer = configure_optimizer(raw_model, cfg.lr, cfg.weight_decay, tuple(cfg.betas))
    if ckpt is not None:
        load_optimizer_state(raw_model, optimizer, ckpt.state["optimizer"])
    if rank == 0:
        start_metrics(run_dir, keep_until_step=step if resume else None)
    # Rank 0 evaluates alone, on batches as wide as a whole micro-step of all ranks.
    eval_loaders = [torch.utils.data.DataLoader(w, batch_size=cfg.batch_size * world)
                    for w in (windows, val_windows)]
    autocast_dtype = torch.bfloat16 if cfg.bf16 else None
    tokens_per_step = schedule.global_batch * context_length

    def save(step: int) -> Path | None:
        """Every rank of a sharded model gathers the full state; rank 0 writes it."""
        weights, optimizer_state = full_state(raw_model, optimizer, cfg.strategy)
        if rank != 0:
            return None
        meta = {"step": step, "data_position": schedule.position(step),
                "tokens_seen": step * tokens_per_step, "seed": cfg.seed, "world_size": world,
                "train_config": asdict(cfg)}
        try:
            return save_checkpoint(run_dir, model=weights, state={"optimizer": optimizer_state},
                                   meta=meta, keep=cfg.keep_checkpoints)
        except NonFiniteStateError as error:
            raise TrainingDivergedError(f"{error}: training diverged by step {step}; stopping "
                                        "(the last checkpoint is left as it was)") from None

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    same_press_s = SAME_PRESS_S if world > 1 else 0.0
    with torch.random.fork_rng(devices=fork_devices), stop_on_signals(same_press_s) as stopping:
        model.train()
        while step < total_steps:
            started = time.perf_counter()
            lr = lr_at(step, peak_lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                       total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(_seed_for(cfg.seed, step, rank))  # dropout masks of this step
            micro = [windows.batch(schedule.indices(step, m, rank)) for m in range(cfg.grad_accum)]
            try:
                loss, norm = train_step(model, optimizer, micro, device, grad_clip=cfg.grad_clip,
                                        autocast_dtype=autocast_dtype, step=step + 1)
            except TrainingDivergedError as error:
                raise TrainingDivergedError(f"{error}; stopping (the last checkpoint is left as "
                                            "it was)") from None
            step += 1
            record = {"step": step, "tokens_seen": step * tokens_per_step, "loss": loss,
                      "lr": lr, "grad_norm": norm}
            records = [record]
            if (rank == 0 or sharded) and (step % cfg.eval_interval == 0 or step == total_steps):
                train_eval, val_loss = evaluate(raw_model, *eval_loaders, device, cfg.eval_iters)
                evaluation = {"step": step, "tokens_seen": record["tokens_seen"],
                              "train_eval_loss": train_eval, "val_loss": val_loss}
                # Generation reads weights outside forward(), which a sharded model cannot.
                if tokenizer is not None and cfg.sample_tokens > 0 and not sharded:
                    raw_model.eval()
                    evaluation["sample"] = _sample(raw_model, tokenizer, cfg.sample_prompt,
                                                   cfg.sample_tokens, context_length, device)
                    raw_model.train()
                records.append(evaluation)
            saved = step % cfg.checkpoint_interval == 0 or step == total_steps
            if rank == 0:
                append_metrics(run_dir, records)
            if saved and (rank == 0 or sharded):
                save(step)
            if bar is not None:
                rate = tokens_per_step / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
                bar.update(1)
                if len(records) > 1:
                    e = records[1]
                    bar.write(f"step {step}: train {e['train_eval_loss']:.3f}, "
                              f"val {e['val_loss']:.3f}" +
                              (f" | {e['sample']!r}" if "sample" in e else ""))
            if on_step is not None:
                on_step(record)
            # Every rank stops at the same step, so the save's collectives all meet.
            if _on_any_rank(stopping() is not None, device) and step < total_steps:
                if bar is not None:
                    bar.close()
                path = latest_checkpoint(run_dir) if saved else save(step)
                if world > 1:  # no rank leaves before rank 0 has written the checkpoint
                    dist.barrier()
                raise TrainingInterrupted(step, path, stopping() or "SIGINT")
    if bar is not None:
        bar.close()
    if world > 1:  # no rank returns before rank 0 has written the last checkpoint
        dist.barrier()
    return read_metrics(run_dir) if rank == 0 else []
