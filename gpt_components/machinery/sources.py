"""Where a model comes from, and the tokenizer that comes with it.

Every command that reads a model (``generate``, ``inspect``, the finetune commands) needs the
tokenizer it was trained with: GPT-2's BPE for GPT-2 weights, the model directory's own files for
Llama 3, Qwen3 or Gemma 3 weights, the learned BPE a run was trained with. This module is the one
place that finds both.

A *source* is a run directory of ``gpt-components train`` (its latest checkpoint), one of its
checkpoints (``RUN/checkpoints/step-NNNNNNNN``), a directory in Hugging Face's layout (any
family; its tokenizer files beside the weights), a lone GPT-2 ``model.safetensors``, or a GPT-2
size (``gpt2``, ``gpt2-medium``, ...) to find in the Hugging Face cache or download.

- ``load_model_and_tokenizer(source, tokenizer=None, **overrides)`` -> ``LoadedModel(model,
  tokenizer, origin)``: the model in eval mode on the CPU, its tokenizer, and a few words saying
  what was loaded.
- ``load_tokenizer_spec(spec)``: ``"gpt2"`` or a directory: ``BPETokenizer.save``'s files, or a
  model directory's ``tokenizer.model`` / ``tokenizer.json``.
- ``tokenizer_of(directory)``: the tokenizer a model directory holds, GPT-2's when it holds none.
- ``save_tokenizer(tokenizer, directory)``: write a tokenizer beside weights so that
  ``tokenizer_of`` finds it again (GPT-2's needs no file).

Errors are ``machinery.checks.ArgumentError`` subclasses whose ``parameter`` is ``source`` or
``tokenizer`` (a missing source is also a ``FileNotFoundError``): the command line names its
flag from that, never from the message.

>>> import tempfile
>>> from gpt_components.bpe import BPETokenizer
>>> learned = BPETokenizer.train("the cat sat on the mat", vocab_size=262)
>>> with tempfile.TemporaryDirectory() as directory:
...     again = tokenizer_of(save_tokenizer(learned, directory))
>>> again.encode("the mat") == learned.encode("the mat"), again.eot_token
(True, 259)
>>> with tempfile.TemporaryDirectory() as directory:
...     tokenizer_of(directory).name  # no tokenizer files: GPT-2's
'gpt2'
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .checks import ArgumentError, renamed, type_error, value_error
from .registry import build_model
from .rundir import holds_run, read_config, tokenizer_spec

__all__ = ["LoadedModel", "load_model_and_tokenizer", "load_tokenizer_spec", "tokenizer_of",
           "save_tokenizer", "TOKENIZER_FILES", "SourceNotFoundError"]

# The files a tokenizer is kept in beside weights: BPETokenizer.save's (GPT-2's format), and
# Hugging Face's / Meta's (Qwen3, Gemma 3 and converted Llama 3; Llama 3's tiktoken file).
TOKENIZER_FILES = ("encoder.json", "vocab.bpe", "pattern.txt", "tokenizer.json",
                   "tokenizer_config.json", "tokenizer.model")


class LoadedModel(NamedTuple):
    """A model in eval mode, the tokenizer it reads, and what was loaded (``run R (step N)``,
    ``weights W``)."""

    model: nn.Module
    tokenizer: Any
    origin: str


class SourceNotFoundError(ArgumentError, FileNotFoundError):
    """The ``source`` path does not exist (an ``ArgumentError`` and a ``FileNotFoundError``)."""


def load_tokenizer_spec(spec: str) -> Any:
    """``"gpt2"`` (tiktoken's GPT-2 encoding) or the tokenizer a directory holds."""
    if not isinstance(spec, str):
        raise type_error("tokenizer", f"tokenizer must be 'gpt2' or a directory path, got "
                                      f"{spec!r}")
    if spec == "gpt2":
        from ..tokenizers import gpt2_tokenizer

        return gpt2_tokenizer()
    if not Path(spec).is_dir():
        raise value_error("tokenizer", f"tokenizer must be 'gpt2', a directory saved by "
                                       f"BPETokenizer.save or a model directory with "
                                       f"tokenizer.model / tokenizer.json, got {spec!r}")
    try:
        if (Path(spec) / "encoder.json").is_file():
            from ..bpe import BPETokenizer

            return BPETokenizer.load(spec)
        from ..modern.tokenizers import load_tokenizer  # Llama 3's, Qwen3's, Gemma 3's files

        return load_tokenizer(spec)
    except (OSError, ValueError) as error:
        raise value_error("tokenizer", f"tokenizer {spec!r} could not be loaded: {error}"
                          ) from None


def tokenizer_of(directory: str | os.PathLike[str]) -> Any:
    """The tokenizer kept in a model directory (``TOKENIZER_FILES``); GPT-2's if there is none.

    A directory whose only tokenizer file this project cannot read (a SentencePiece
    ``tokenizer.model``) raises ValueError rather than falling back to GPT-2's ids.
    """
    directory = Path(directory)
    if any((directory / name).is_file() for name in TOKENIZER_FILES) or (
            directory / "original" / "tokenizer.model").is_file():
        return load_tokenizer_spec(str(directory))
    return load_tokenizer_spec("gpt2")


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike[str]) -> Path:
    """Keep ``tokenizer`` in ``directory`` (beside the weights) for ``tokenizer_of``; returns it.

    Tokenizer files already there are replaced. GPT-2's tokenizer (``name == "gpt2"``) is what a
    directory without them means, so it writes none; any other needs a ``save(directory)``
    method (``BPETokenizer``, Llama 3's and ``tokenizer.json`` tokenizers have one).
    """
    save = getattr(tokenizer, "save", None)
    is_gpt2 = getattr(tokenizer, "name", None) == "gpt2"
    if not is_gpt2 and not callable(save):
        raise type_error("tokenizer", f"tokenizer must be GPT-2's or have a save(directory) "
                                      f"method (BPETokenizer, Llama 3's, a tokenizer.json's), "
                                      f"got {type(tokenizer).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        (directory / name).unlink(missing_ok=True)
    if not is_gpt2:
        save(directory)
    return directory


def _run_of(path: Path) -> tuple[Path, Path] | None:
    """(run, what to load) when ``path`` is a run directory or one of its checkpoints."""
    if holds_run(path) and (path / "checkpoints").is_dir():
        return path, path
    run = path.parent.parent
    if (path / "meta.json").is_file() and path.parent.name == "checkpoints" and holds_run(run):
        return run, path
    return None


def _is_run_without_checkpoint(path: Path) -> bool:
    """A run directory (its ``config.json`` written by train) that has saved no checkpoint."""
    if not holds_run(path) or _latest_checkpoint_or_none(path) is not None:
        return False
    try:
        read_config(path)
    except ValueError:
        return False  # a Hugging Face config.json: not a run
    return True


def _latest_checkpoint_or_none(run: Path) -> Path | None:
    try:
        return latest_checkpoint(run)
    except CheckpointError:
        return run  # a damaged pointer: a checkpoint exists; loading it says what is wrong


def _from_run(run: Path, target: Path, overrides: dict[str, Any]) -> tuple[nn.Module, str, int]:
    """A run's model (the checkpoint ``target``), its tokenizer spec and the step reached."""
    try:
        saved = read_config(run)
        model = build_model(dataclasses.replace(saved.model, **overrides))
    except (TypeError, ValueError) as error:
        raise value_error("source", f"source {str(run)!r}: {error}") from None
    try:
        checkpoint = load_checkpoint(target, load_state=False)  # no optimizer needed
        checkpoint.load_into(model)
    except CheckpointError as error:
        raise value_error("source", f"source: {error}") from None
    return model, tokenizer_spec(run, saved.tokenizer), checkpoint.meta.get("step")


def load_model_and_tokenizer(source: str | os.PathLike[str], tokenizer: str | None = None,
                             **overrides: Any) -> LoadedModel:
    """The model of ``source`` in eval mode on the CPU, with the tokenizer it comes with.

    A run reads the tokenizer its ``config.json`` names; a Hugging Face directory (or the
    folder of a lone ``model.safetensors``) the files ``tokenizer_of`` finds; a GPT-2 size
    GPT-2's. ``tokenizer`` (``"gpt2"`` or a directory) overrides that choice. ``overrides`` set
    config fields that do not change shapes (``drop_rate``, ``attn_kernel``).
    """
    from ..weights import GPT2_NAMES
    from .pretrained import from_pretrained

    if not isinstance(source, (str, os.PathLike)):
        raise type_error("source", f"source must be a path or a GPT-2 name, got "
                                   f"{type(source).__name__}")
    path = Path(source)
    if not path.exists() and str(source) not in GPT2_NAMES:
        raise SourceNotFoundError("source", f"source {str(source)!r} does not exist: give a run "
                                            "directory, one of its checkpoints, a "
                                            "model.safetensors file or Hugging Face directory, "
                                            f"or one of {', '.join(GPT2_NAMES)}")
    if path.is_dir() and _is_run_without_checkpoint(path):
        raise value_error("source", f"source {str(source)!r} is a run with no checkpoint yet "
                                    "(it stopped before its first): train it until it saves one "
                                    "(every checkpoint interval and at the end), for example "
                                    f"with: gpt-components train --resume {str(source)}")
    found = _run_of(path) if path.exists() else None
    if found is not None:
        model, spec, step = _from_run(*found, overrides)
        origin = f"run {source} (step {step})"
        kept = _tokenizer_from_source(spec, "the run's") if tokenizer is None else None
    else:
        try:
            model = from_pretrained(path if path.exists() else str(source), **overrides)
        except ArgumentError as error:  # about the path from_pretrained was given: source
            raise renamed(error, "source") from None
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise value_error("source", f"source: {error}") from None
        origin = f"weights {source}"
        kept = None
        if tokenizer is None:
            folder = path if path.is_dir() else path.parent
            kept = (_tokenizer_from_source(str(folder), "the weights'", tokenizer_of)
                    if path.exists() else load_tokenizer_spec("gpt2"))
    if tokenizer is not None:
        kept = load_tokenizer_spec(tokenizer)
    return LoadedModel(model.eval(), kept, origin)


def _tokenizer_from_source(spec: str, whose: str, load=load_tokenizer_spec) -> Any:
    try:
        return load(spec)
    except ValueError as error:
        raise value_error("source", f"source: {whose} tokenizer could not be read: {error}"
                          ) from None
