"""The run directory of ``gpt-components train``: its one owner.

A run directory holds ``config.json`` (what the run is: the model's config, the training
config, the corpus, the tokenizer), ``tokenizer/`` when it was trained with a tokenizer other
than GPT-2's, ``checkpoints/`` (``checkpoint``), ``metrics.jsonl`` and ``loss.png``
(``metrics``) and the lock ``.lock``. This module owns the parts the others do not:

- ``config.json``'s schema: ``write_config`` (atomically) and ``read_config`` -> ``RunConfig``;
  ``tokenizer_spec`` says where the run's tokenizer is, ``keep_tokenizer`` copies one in;
- the resume arithmetic: ``steps_per_epoch``, ``total_steps`` (the one formula the training
  loop and a resume share) and ``resume_point`` (the step reached and the run's total);
- memory sizing: ``available_memory``, ``check_training_fits``;
- finding checkpoints and locking, through ``checkpoint``: ``hold`` locks the run (once, for
  the whole command; ``training.train`` takes the same lock again, which nests).

Errors are ``ArgumentError`` subclasses naming the parameter (``run_dir``, ``context_length``,
``corpus``), which the command line turns into its flags.

>>> import tempfile
>>> from gpt_components.machinery.registry import preset_config
>>> run = tempfile.mkdtemp()
>>> write_config(run, preset_config("gpt-nano"), {"batch_size": 8, "betas": [0.9, 0.99]},
...              corpus="verdict.txt", tokenizer="gpt2", corpus_tokens=5145).name
'config.json'
>>> saved = read_config(run)
>>> saved.model.emb_dim, saved.train["betas"], tokenizer_spec(run, saved.tokenizer)
(48, (0.9, 0.99), 'gpt2')
>>> total_steps(100, batch_size=4, grad_accum=2, epochs=3, max_steps=None)  # 12 steps an epoch
36
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json_atomically
from .checkpoint import latest_step, lock_run
from .checks import value_error
from .registry import build_model, config_from_dict, config_to_dict

__all__ = ["CONFIG_FILE", "RunConfig", "read_config", "write_config", "holds_run",
           "tokenizer_spec", "keep_tokenizer", "steps_per_epoch", "total_steps", "resume_point",
           "available_memory", "check_training_fits", "hold"]

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
# A model directory given as the tokenizer: its tokenizer files are kept, never its weights.
_NOT_TOKENIZER_FILES = shutil.ignore_patterns("*.safetensors", "*.bin", "*.pth", "*.pt", "*.gguf")


@dataclass(frozen=True)
class RunConfig:
    """What ``config.json`` says a run is."""

    model: Any  # the model's config (any family's)
    train: dict[str, Any]  # the fields of the TrainConfig the run was started with
    corpus: str  # the corpus path
    tokenizer: str  # "gpt2", or the directory in the run that holds its tokenizer
    corpus_tokens: int | None


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` already holds a run (its ``config.json``)."""
    return (Path(run_dir) / CONFIG_FILE).is_file()


def write_config(run_dir: str | os.PathLike, model_cfg: Any, train: dict[str, Any], *,
                 corpus: str, tokenizer: str, corpus_tokens: int | None) -> Path:
    """Write the run's ``config.json`` (temporary file, fsync, rename); returns its path."""
    path = Path(run_dir) / CONFIG_FILE
    write_json_atomically(path, {"model": config_to_dict(model_cfg), "train": dict(train),
                                 "corpus": corpus, "tokenizer": tokenizer,
                                 "corpus_tokens": corpus_tokens})
    return path


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """The run ``run_dir`` holds; a ``ValueError`` (parameter ``run_dir``) naming the file when
    it holds none or one that is damaged."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise value_error("run_dir", f"run_dir must be a run directory with {CONFIG_FILE}, got "
                                     f"{str(run_dir)!r}")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        model_cfg = config_from_dict(saved["model"])
        train = dict(saved.get("train", {}))  # all a loader needs is the model and tokenizer
        if "betas" in train:
            train["betas"] = tuple(train["betas"])
        return RunConfig(model_cfg, train, saved.get("corpus", ""),
                         saved.get("tokenizer", "gpt2"), saved.get("corpus_tokens"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
            ValueError) as error:
        raise value_error("run_dir", f"run_dir {str(path)!r} is not a run configuration "
                                     f"written by train ({type(error).__name__}: {error})"
                          ) from None


def tokenizer_spec(run_dir: str | os.PathLike, saved: str) -> str:
    """The spec ``load_tokenizer_spec`` reads for a run whose config names ``saved``."""
    return saved if saved == "gpt2" else str(Path(run_dir) / saved)


def keep_tokenizer(spec: str, run_dir: str | os.PathLike) -> str:
    """Copy the tokenizer ``spec`` names into the run (unless GPT-2's); the name to save."""
    if spec == "gpt2":
        return "gpt2"
    shutil.copytree(spec, Path(run_dir) / TOKENIZER_DIR, dirs_exist_ok=True,
                    ignore=_NOT_TOKENIZER_FILES)
    return TOKENIZER_DIR


def steps_per_epoch(n_windows: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    """Optimizer steps in one pass over ``n_windows`` training windows (whole global batches:
    ``batch_size`` windows per micro-batch, ``grad_accum`` micro-batches, ``world`` processes)."""
    global_batch = batch_size * grad_accum * world
    steps = n_windows // global_batch
    if steps == 0:
        raise value_error("batch_size", f"batch_size: the training split has {n_windows} "
                                        f"windows, fewer than one global batch of {global_batch}"
                                        ": use a smaller batch size or context length, or a "
                                        "larger corpus")
    return steps


def total_steps(n_windows: int, *, batch_size: int, grad_accum: int, epochs: int,
                max_steps: int | None, world: int = 1) -> int:
    """The run's optimizer steps: ``max_steps`` when given, else ``epochs`` whole passes."""
    return max_steps or epochs * steps_per_epoch(n_windows, batch_size, grad_accum, world)


def resume_point(run_dir: str | os.PathLike, n_windows: int, train: dict[str, Any],
                 world: int = 1) -> tuple[int, int]:
    """(the step the run's latest checkpoint reached, 0 if none; the run's total steps)."""
    total = total_steps(n_windows, batch_size=train["batch_size"],
                        grad_accum=train["grad_accum"], epochs=train["epochs"],
                        max_steps=train["max_steps"], world=world)
    return latest_step(run_dir), total


def available_memory(device: torch.device) -> int | None:
    """Bytes ``device`` can still allocate (CUDA: free memory; else the host's available
    memory), or None where the OS does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_training_fits(model_cfg: Any, batch_size: int, train_tokens: int,
                        device: torch.device) -> None:
    """Refuse a context longer than the training split, or a run that cannot fit in memory."""
    context = model_cfg.context_length
    if train_tokens < 2:
        raise value_error("corpus", f"corpus holds {train_tokens} training tokens, too few to "
                                    "train on: give a larger corpus")
    if context + 1 > train_tokens:
        raise value_error("context_length",
                          f"context_length {context} is longer than the training split "
                          f"({train_tokens:,} tokens), which then holds no window: at most "
                          f"{train_tokens - 1:,}")
    with torch.device("meta"):  # shapes only: nothing is allocated
        shape = build_model(model_cfg)
    params = sum(p.numel() * p.element_size() for p in shape.parameters())
    buffers = sum(b.numel() * b.element_size() for b in shape.buffers())
    # Weights, gradients and AdamW's two moments; per layer, a micro-batch's attention scores,
    # probabilities and dropout mask, and a few dozen activations of width emb_dim per token.
    layer = batch_size * (3 * model_cfg.n_heads * context * context
                          + 32 * context * model_cfg.emb_dim) * 4
    need = 4 * params + buffers + model_cfg.n_layers * layer
    available = available_memory(device)
    if available is not None and need > available:
        raise value_error("context_length",
                          f"context_length {context} (with batch size {batch_size}) needs "
                          f"about {_gb(need)} to train this model ({_gb(buffers)} of it "
                          f"attention masks and {_gb(model_cfg.n_layers * layer)} one step's "
                          f"activations), more than the {_gb(available)} available on {device}"
                          ": lower the context length or the batch size, or choose a smaller "
                          "preset")


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike, *, holder: bool = True) -> Iterator[Path]:
    """Lock ``run_dir`` for the block (``RunLockedError`` if another process has it); a process
    that is not the ``holder`` (a torchrun rank other than 0) takes no lock."""
    if not holder:
        yield Path(run_dir)
        return
    with lock_run(run_dir) as path:
        yield path
