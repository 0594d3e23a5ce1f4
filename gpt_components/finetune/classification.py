"""Classification finetuning (chapter 6): a GPT that reads a text message and says spam or ham.

The model is a ``GPTModel`` whose output head maps to ``num_classes`` scores instead of the
vocabulary; the label is read at the *last real token* of each text (with causal attention that
position has seen the whole message, and padding after it cannot change it). The data side
(loading, balancing, splitting, padding) is ``finetune.spam_data``. Exports
``make_classifier``, ``classifier_logits``, ``classification_loss``,
``classification_loss_loader``, ``classification_accuracy``, ``train_classifier_simple``,
``classify``, ``save_classifier`` and ``load_classifier``.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = make_classifier(GPTModel(GPTConfig.from_name("gpt-nano")), num_classes=2)
>>> classifier_logits(model, torch.tensor([[5303, 50256]]), torch.tensor([1])).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from ..machinery.checks import (
    check_float,
    check_instance,
    check_int,
    check_str,
    check_tensor,
    type_error,
    value_error,
)
from ..machinery.registry import build_model, config_to_dict
from ..machinery.tensor_files import check_state_dict, read_safetensors
from ..tokenizers import gpt2_tokenizer
from .loop import finetune_loop
from .spam_data import SPAM_LABELS

__all__ = [
    "make_classifier",
    "classifier_logits",
    "classification_loss",
    "classification_loss_loader",
    "classification_accuracy",
    "train_classifier_simple",
    "classify",
    "save_classifier",
    "load_classifier",
]


def make_classifier(
    model: nn.Module,
    num_classes: int = len(SPAM_LABELS),
    trainable_blocks: int | None = 1,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Turn a ``GPTModel`` into a classifier, in place; returns ``model``.

    ``out_head`` becomes a fresh ``nn.Linear(emb_dim, num_classes)``, drawn once as
    ``nn.Linear`` draws it: from ``generator`` when given, otherwise from torch's global RNG,
    as the book does (``torch.manual_seed(123)`` then this gives the book's head). Only the last
    ``trainable_blocks`` transformer blocks, ``final_norm`` and the new head keep
    ``requires_grad`` (the book's choice: one block); ``trainable_blocks=None`` trains everything.
    """
    for name in ("out_head", "trf_blocks", "final_norm"):
        if not hasattr(model, name):
            raise type_error("model", f"model must be a GPTModel with {name!r}, got "
                                      f"{type(model).__name__}")
    check_int("num_classes", num_classes, low=1)
    n_blocks = len(model.trf_blocks)
    check_int("trainable_blocks", trainable_blocks, low=0, high=n_blocks, optional=True)
    if generator is not None:
        check_instance("generator", generator, torch.Generator, "a torch.Generator or None")
    old = model.out_head
    shape = {"in_features": old.in_features, "out_features": num_classes,
             "device": old.weight.device, "dtype": old.weight.dtype}
    if generator is None:
        head = nn.Linear(**shape)  # the book's line: one draw from the global RNG
    else:
        head = torch.nn.utils.skip_init(nn.Linear, **shape)
        bound = 1 / old.in_features**0.5  # nn.Linear's own range, and its order: weight, bias
        with torch.no_grad():
            for p in (head.weight, head.bias):
                p.uniform_(-bound, bound, generator=generator)
    model.out_head = head
    if trainable_blocks is None:
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    for block in list(model.trf_blocks)[n_blocks - trainable_blocks:]:
        block.requires_grad_(True)
    model.final_norm.requires_grad_(True)
    model.out_head.requires_grad_(True)
    return model


def classifier_logits(
    model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Class scores (batch, num_classes) read at each row's last real token.

    ``lengths`` counts the real tokens per row; without it every position is taken as real.
    """
    check_instance("model", model, nn.Module, "an nn.Module (a classifier GPTModel)")
    check_tensor("input_ids", input_ids, kind="integer")
    if input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise value_error("input_ids", f"input_ids must be (batch, tokens >= 1), got shape "
                                       f"{tuple(input_ids.shape)}")
    if lengths is None:
        return model(input_ids)[:, -1, :]
    try:
        lengths = torch.as_tensor(lengths, device=input_ids.device)
    except (TypeError, ValueError, RuntimeError):
        raise type_error("lengths", f"lengths must be a tensor of ints, got "
                                    f"{type(lengths).__name__}") from None
    check_tensor("lengths", lengths, kind="integer")
    width = input_ids.shape[1]
    in_range = bool(((lengths >= 1) & (lengths <= width)).all())
    if lengths.shape != input_ids.shape[:1] or not in_range:
        raise value_error("lengths", f"lengths must be {input_ids.shape[0]} values in "
                                     f"[1, {width}], got {lengths.tolist()}")
    # Causal attention: positions after the longest row's last token cannot matter. Skip them.
    logits = model(input_ids[:, : int(lengths.max())])  # (B, T', num_classes)
    rows = torch.arange(input_ids.shape[0], device=logits.device)
    return logits[rows, lengths.to(logits.device) - 1]  # (B, num_classes)


def _check_labels(labels: torch.Tensor, rows: int, num_classes: int) -> None:
    check_tensor("labels", labels, kind="integer", dims=1)
    if labels.shape[0] != rows:
        raise value_error("labels", f"labels must hold one class index per row of input_ids "
                                    f"({rows}), got {labels.shape[0]}")
    if labels.numel() and not bool(((labels >= 0) & (labels < num_classes)).all()):
        raise value_error("labels", f"labels must be class indices in [0, {num_classes}), got "
                                    f"{labels.tolist()}")


def classification_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the scores at the last real token against ``labels``."""
    check_tensor("input_ids", input_ids, kind="integer")
    _check_labels(labels, input_ids.shape[0] if input_ids.ndim else -1, _num_classes(model))
    logits = classifier_logits(model, input_ids, lengths)
    return nn.functional.cross_entropy(logits, labels.to(logits.device))


def _unpack(batch, device):
    input_ids, labels, *rest = batch
    lengths = rest[0].to(device) if rest else None
    return input_ids.to(device), labels.to(device), lengths


def _check_num_batches(num_batches: int | None) -> None:
    check_int("num_batches", num_batches, low=1, optional=True)


def classification_loss_loader(
    loader: DataLoader,
    model: nn.Module,
    device: str | torch.device = "cpu",
    num_batches: int | None = None,
) -> float:
    """Mean batch loss over the first ``num_batches`` batches of ``loader`` (all by default)."""
    _check_num_batches(num_batches)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in itertools.islice(loader, num_batches):
            total += classification_loss(model, *_unpack(batch, device)).item()
            count += 1
    return total / count if count else float("nan")


def classification_accuracy(
    loader: DataLoader,
    model: nn.Module,
    device: str | torch.device = "cpu",
    num_batches: int | None = None,
) -> float:
    """Share of texts whose highest score is their label, over the first ``num_batches``."""
    _check_num_batches(num_batches)
    correct, seen = 0, 0
    with torch.no_grad():
        for batch in itertools.islice(loader, num_batches):
            input_ids, labels, lengths = _unpack(batch, device)
            predicted = classifier_logits(model, input_ids, lengths).argmax(dim=-1)
            correct += int((predicted == labels).sum())
            seen += len(labels)
    return correct / seen if seen else float("nan")


def train_classifier_simple(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    num_epochs: int = 5,
    eval_freq: int = 50,
    eval_iter: int = 5,
    grad_clip: float | None = None,
    seed: int | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The book's classifier loop: one optimizer step per batch, evaluations along the way.

    Returns one record per step (``epoch``, ``step``, ``examples_seen``, ``loss``); every
    ``eval_freq`` steps and at each epoch's end the record also holds ``train_loss``,
    ``val_loss``, ``train_accuracy`` and ``val_accuracy`` over ``eval_iter`` batches. With
    ``seed``, dropout draws from a generator seeded with it (torch's global state is restored).
    """
    check_int("eval_iter", eval_iter, low=1)  # before any step, not at the first evaluation
    check_float("grad_clip", grad_clip, low=0, low_open=True, optional=True)

    def loss_fn(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        return classification_loss(model, *_unpack(batch, device))

    def evaluate() -> dict[str, float]:
        return {
            "train_loss": classification_loss_loader(train_loader, model, device, eval_iter),
            "val_loss": classification_loss_loader(val_loader, model, device, eval_iter),
            "train_accuracy": classification_accuracy(train_loader, model, device, eval_iter),
            "val_accuracy": classification_accuracy(val_loader, model, device, eval_iter),
        }

    return finetune_loop(model, train_loader, optimizer, loss_fn=loss_fn,
                         count=lambda batch: len(batch[1]), evaluate=evaluate, device=device,
                         num_epochs=num_epochs, eval_freq=eval_freq, grad_clip=grad_clip,
                         seed=seed, counted="examples_seen", on_record=on_record)


def _num_classes(model: nn.Module) -> int:
    head = getattr(model, "out_head", None)
    if head is None:
        raise type_error("model", f"model must be a classifier GPTModel (make_classifier), got "
                                  f"{type(model).__name__}")
    return getattr(head, "linear", head).out_features  # a LoRA-wrapped head keeps its linear


def classify(
    text: str,
    model: nn.Module,
    tokenizer=None,
    labels: Sequence[str] = SPAM_LABELS,
    max_length: int | None = None,
) -> str:
    """The label the classifier gives ``text``, cut to ``max_length`` (the context by default)."""
    check_str("text", text)
    check_int("max_length", max_length, low=1, optional=True)
    tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
    if not callable(getattr(tokenizer, "encode", None)):
        raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                      f"{type(tokenizer).__name__}")
    _check_label_names(labels, _num_classes(model))
    if getattr(model, "cfg", None) is None:
        raise type_error("model", f"model must be a classifier GPTModel with a cfg, got "
                                  f"{type(model).__name__}")
    context = model.cfg.context_length
    max_length = context if max_length is None else min(max_length, context)
    ids = tokenizer.encode(text)[:max_length]
    if not ids:
        raise value_error("text", f"text must encode to at least one token, got {text!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scores = classifier_logits(model, torch.tensor([ids], device=device))
    model.train(was_training)
    return labels[int(scores.argmax(dim=-1))]


def _check_label_names(labels: Any, num_classes: int) -> None:
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not all(
            isinstance(label, str) for label in labels):
        raise type_error("labels", f"labels must be a sequence of class names (str), got "
                                   f"{labels!r}")
    if len(labels) != num_classes:
        raise value_error("labels", f"labels must name the model's {num_classes} classes, got "
                                    f"{tuple(labels)}")


CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS = "classifier.json", "model.safetensors"


def save_classifier(
    model: nn.Module,
    directory: str | os.PathLike,
    labels: Sequence[str] = SPAM_LABELS,
    max_length: int | None = None,
    **info,
) -> Path:
    """Write ``classifier.json`` (model config, labels, ``max_length``, ``info``) and weights.

    Merge LoRA adapters first (``merge_lora``): the file holds a plain ``GPTModel`` state.
    """
    cfg = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        raise type_error("model", f"model must be a GPTModel with a cfg, got "
                                  f"{type(model).__name__}")
    _check_label_names(labels, _num_classes(model))
    check_int("max_length", max_length, low=1, optional=True)
    check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model": config_to_dict(cfg), "labels": list(labels), "max_length": max_length,
              **info}
    (directory / CLASSIFIER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / CLASSIFIER_WEIGHTS))
    return directory


def load_classifier(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """A classifier written by ``save_classifier`` (in eval mode) and its ``classifier.json``."""
    check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
    directory = Path(directory)
    config_file = directory / CLASSIFIER_CONFIG
    if not config_file.is_file() or not (directory / CLASSIFIER_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"directory: {str(directory)!r} holds no {CLASSIFIER_CONFIG} and "
            f"{CLASSIFIER_WEIGHTS} (write them with save_classifier or finetune-classifier)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        model = build_model(config["model"])
        make_classifier(model, len(config["labels"]), trainable_blocks=None)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise value_error("directory", f"directory: {str(config_file)!r} is not a classifier.json "
                                       f"written by save_classifier ({type(error).__name__}: "
                                       f"{error})") from None
    weights_file = directory / CLASSIFIER_WEIGHTS
    found = read_safetensors(weights_file)
    model.load_state_dict(check_state_dict(model.state_dict(), found, weights_file))
    return model.to(device).eval(), config
