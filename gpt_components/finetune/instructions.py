"""Instruction finetuning (chapter 7): Alpaca-style prompts, batches that teach only the answer.

Exports ``load_instruction_data`` (the bundled 1,100 records or a JSON file of your own),
``format_input`` (the Alpaca prompt), ``instruction_splits`` (85/5/10 with a fixed seed),
``InstructionDataset``, ``InstructionExample``, ``instruction_collate`` (pad, shift, mask),
``instruction_loss``, ``train_instructions``, ``generate_responses``, ``extract_response``
and ``write_responses``.

>>> entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
>>> print(format_input(entry))  # doctest: +ELLIPSIS
Below is an instruction that describes a task. Write a response that ...
<BLANKLINE>
### Instruction:
Name a colour.
>>> inputs, targets = instruction_collate([[1, 2, 3], [4, 5]])
>>> inputs.tolist()
[[1, 2, 3], [4, 5, 50256]]
>>> targets.tolist()  # the first end-of-text is a target; later padding is ignored
[[2, 3, 50256], [5, 50256, -100]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..generation import generate
from ..machinery.checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_records,
    check_str,
    check_tensor,
    type_error,
    value_error,
)
from ..machinery.resources import resource_path
from ..tokenizers import gpt2_tokenizer
from ..training import evaluate
from .loop import finetune_loop
from .spam_data import Splits, split_records

__all__ = [
    "load_instruction_data",
    "format_input",
    "format_response",
    "instruction_splits",
    "InstructionExample",
    "InstructionDataset",
    "instruction_collate",
    "instruction_loss",
    "train_instructions",
    "extract_response",
    "generate_responses",
    "write_responses",
]

ENDOFTEXT_ID = 50256
IGNORE_INDEX = -100

_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


def _check_entry(entry: Any, where: str = "entry", parameter: str = "entry") -> None:
    if not isinstance(entry, Mapping):
        raise type_error(parameter, f"{where} must be a mapping with 'instruction' and 'output', "
                                    f"got {entry!r}")
    for key in ("instruction", "output"):
        if key not in entry:
            raise value_error(parameter, f"{where} has no {key!r} field: {dict(entry)!r}")
    for key in ("instruction", "input", "output"):
        if key in entry and not isinstance(entry[key], str):
            raise type_error(parameter, f"{where}[{key!r}] must be a string, got {entry[key]!r}")


def _check_records(data: Any, empty: bool = False) -> list:
    """``data`` as a list: a sequence of instruction records (non-empty unless ``empty``)."""
    return check_records("data", data, _check_entry, "instruction records", empty=empty)


def _check_tokenizer(tokenizer: Any) -> None:
    if not callable(getattr(tokenizer, "encode", None)):
        raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                      f"{type(tokenizer).__name__}")


def load_instruction_data(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Instruction records from a JSON list; the bundled ``instruction-data.json`` by default.

    Every record needs ``instruction`` and ``output`` strings; ``input`` is optional ("" if absent).
    """
    path = resource_path("instruction-data.json") if path is None else path
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike) or None")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no instruction file at {os.fspath(path)!r}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise value_error("path", f"path: {os.fspath(path)!r} is not valid JSON "
                                      f"({error})") from None
    if not isinstance(data, list):
        raise value_error("path", f"path: {os.fspath(path)!r} must hold a JSON list of records")
    if not data:
        raise value_error("path", f"path: {os.fspath(path)!r} holds no records (an empty list)")
    for i, entry in enumerate(data):
        _check_entry(entry, f"record {i} of path {os.fspath(path)!r}", "path")
    return [{"input": "", **entry} for entry in data]


def format_input(entry: Mapping[str, str]) -> str:
    """The Alpaca prompt: preamble, ``### Instruction:``, and ``### Input:`` when there is one."""
    _check_entry(entry)
    text = f"{_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def format_response(entry: Mapping[str, str]) -> str:
    """What follows the prompt in training: ``### Response:`` and the expected output."""
    _check_entry(entry)
    return f"\n\n### Response:\n{entry['output']}"


def instruction_splits(
    data: Sequence[Mapping[str, str]] | None = None, seed: int = 123
) -> Splits:
    """Shuffle with ``seed`` and split 85% train, 5% validation, 10% test."""
    data = load_instruction_data() if data is None else _check_records(data)
    return split_records(data, fractions=(0.85, 0.05, 0.10), seed=seed)


class InstructionExample(NamedTuple):
    """One tokenized record: the prompt and response ids, and how many ids are prompt."""

    token_ids: list[int]
    prompt_length: int


class InstructionDataset(Dataset):
    """Records tokenized once as prompt + response; items are ``InstructionExample``."""

    def __init__(self, data: Sequence[Mapping[str, str]], tokenizer=None) -> None:
        tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
        _check_tokenizer(tokenizer)
        self.data = _check_records(data, empty=True)
        self.examples: list[InstructionExample] = []
        for entry in self.data:
            prompt = tokenizer.encode(format_input(entry))
            response = tokenizer.encode(format_response(entry))
            self.examples.append(InstructionExample(prompt + response, len(prompt)))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> InstructionExample:
        return self.examples[index]


def instruction_collate(
    batch: Sequence[InstructionExample | Sequence[int]],
    pad_token_id: int = ENDOFTEXT_ID,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = None,
    mask_prompt: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to its longest sequence; targets are the inputs shifted left by one.

    Each target row keeps the first ``pad_token_id`` after its sequence (the model must learn to
    stop) and sets every later padding position to ``ignore_index``. With ``mask_prompt`` the
    targets that are prompt tokens are ``ignore_index`` too. Rows are cut to
    ``allowed_max_length``. Items are ``InstructionExample``s or plain lists of token ids.
    Returns ``(inputs, targets)``, both (batch, length) int64. ``pad_token_id`` is GPT-2's
    ``<|endoftext|>`` by default: pass your tokenizer's ``eot_token`` for any other vocabulary.
    """
    if isinstance(batch, (str, Mapping)) or not isinstance(batch, Sequence):
        raise type_error("batch", f"batch must be a sequence of InstructionExample or token id "
                                  f"lists, got {type(batch).__name__}")
    if len(batch) == 0:
        raise value_error("batch", "batch must hold at least one sequence, got an empty batch")
    check_int("allowed_max_length", allowed_max_length, low=1, optional=True)
    check_int("pad_token_id", pad_token_id, low=0)
    check_int("ignore_index", ignore_index)
    check_bool("mask_prompt", mask_prompt)
    examples = [_as_example(item, mask_prompt) for item in batch]
    width = max(len(e.token_ids) for e in examples)  # the longest row gets no padding input
    inputs = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    targets = torch.full((len(examples), width), ignore_index, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(examples):
        n = len(ids)
        inputs[row, :n] = torch.tensor(ids, dtype=torch.long)
        targets[row, : n - 1] = inputs[row, 1:n]
        targets[row, n - 1] = pad_token_id  # the end-of-text the model should emit
        if mask_prompt:
            # target i is token i + 1: the prompt's tokens 1 .. prompt_length - 1
            targets[row, : max(prompt_length - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs.to(device), targets.to(device)


def _as_example(item: InstructionExample | Sequence[int], mask_prompt: bool) -> InstructionExample:
    if isinstance(item, InstructionExample):
        example = item
    elif isinstance(item, (torch.Tensor, Sequence)) and not isinstance(item, (str, bytes)):
        if mask_prompt:
            raise type_error("batch", "batch items must be InstructionExample when mask_prompt "
                                      "is True")
        ids = item.tolist() if isinstance(item, torch.Tensor) else list(item)
        example = InstructionExample(ids, 0)
    else:
        raise type_error("batch", f"batch items must be token id lists or InstructionExample, "
                                  f"got {item!r}")
    ids, prompt_length = example
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise type_error("batch", f"batch items must hold int token ids, got {ids!r}")
    if len(ids) == 0:
        raise value_error("batch", "batch items must hold at least one token id, got an empty "
                                   "sequence")
    check_int("prompt_length", prompt_length)
    if not 0 <= prompt_length <= len(ids):
        raise value_error("prompt_length", f"prompt_length must be in [0, {len(ids)}], got "
                                           f"{prompt_length}")
    return example


def instruction_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not ``ignore_index``."""
    check_instance("model", model, nn.Module, "an nn.Module (model(idx) -> logits)")
    check_tensor("inputs", inputs, kind="integer", dims=2)
    check_tensor("targets", targets, kind="integer")
    if targets.shape != inputs.shape:
        raise value_error("targets", f"targets must have the inputs' shape {tuple(inputs.shape)}, "
                                     f"got {tuple(targets.shape)}")
    check_int("ignore_index", ignore_index)
    logits = model(inputs)  # (B, T, V)
    return nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index
    )


def extract_response(generated_text: str, prompt: str | None = None) -> str:
    """The answer part of a generated text: what follows ``### Response:``, stripped."""
    check_str("generated_text", generated_text, empty=True)
    check_str("prompt", prompt, empty=True, optional=True)
    if prompt is not None and generated_text.startswith(prompt):
        generated_text = generated_text[len(prompt):]
    marker = "### Response:"
    if marker in generated_text:
        generated_text = generated_text.split(marker, 1)[1]
    return generated_text.replace("<|endoftext|>", "").strip()


def train_instructions(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    num_epochs: int = 2,
    eval_freq: int = 5,
    eval_iter: int = 5,
    grad_clip: float | None = 1.0,
    seed: int | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The book's instruction loop, built on the training module's ``train_step``/``evaluate``.

    Batches are ``(inputs, targets)`` from ``instruction_collate``; ``-100`` targets carry no
    loss. Returns one record per step (``epoch``, ``step``, ``tokens_seen``, ``loss``); every
    ``eval_freq`` steps and at each epoch's end it also holds ``train_loss`` and ``val_loss``
    over ``eval_iter`` batches. With ``seed``, dropout draws from a generator seeded with it.
    """
    check_int("eval_iter", eval_iter, low=1)  # before any step, not at the first evaluation
    check_float("grad_clip", grad_clip, low=0, low_open=True, optional=True)

    def losses() -> dict[str, float]:
        train_loss, val_loss = evaluate(model, train_loader, val_loader, device, eval_iter)
        return {"train_loss": train_loss, "val_loss": val_loss}

    # No loss_fn: next-token cross-entropy, whose -100 targets carry no loss.
    return finetune_loop(model, train_loader, optimizer,
                         count=lambda batch: batch[0].numel(), evaluate=losses, device=device,
                         num_epochs=num_epochs, eval_freq=eval_freq, grad_clip=grad_clip,
                         seed=seed, counted="tokens_seen", on_record=on_record)


def generate_responses(
    model: nn.Module,
    data: Sequence[Mapping[str, str]],
    tokenizer=None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> list[dict[str, str]]:
    """Each record with a ``model_response``: the model's answer to its prompt.

    Decoding is greedy by default and stops at the tokenizer's end of text (``eot_token``;
    GPT-2's ``<|endoftext|>`` without a tokenizer); prompts longer than the context keep their
    last tokens. ``progress(i, record)`` is called after each record.
    """
    check_instance("model", model, nn.Module, "an nn.Module with a cfg (a GPTModel)")
    if getattr(getattr(model, "cfg", None), "context_length", None) is None:
        raise type_error("model", f"model must have a cfg with a context_length, got "
                                  f"{type(model).__name__}")
    data = _check_records(data, empty=True)
    check_int("max_new_tokens", max_new_tokens, low=1)
    check_float("temperature", temperature, low=0)
    if generator is not None:
        check_instance("generator", generator, torch.Generator, "a torch.Generator or None")
    if progress is not None and not callable(progress):
        raise type_error("progress", f"progress must be a callable (i, record) or None, got "
                                     f"{type(progress).__name__}")
    tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
    _check_tokenizer(tokenizer)
    end = getattr(tokenizer, "eot_token", None)  # a tokenizer without one runs to the limit
    device = next(model.parameters()).device
    context = model.cfg.context_length
    was_training = model.training
    model.eval()
    results = []
    for i, entry in enumerate(data):
        ids = tokenizer.encode(format_input(entry))[-context:]
        out = generate(model, torch.tensor([ids], device=device), max_new_tokens,
                       temperature=temperature, eos_id=end, generator=generator)
        new = [t for t in out[0, len(ids):].tolist() if t != end]
        results.append({**entry, "model_response": extract_response(tokenizer.decode(new))})
        if progress is not None:
            progress(i, results[-1])
    model.train(was_training)
    return results


def write_responses(path: str | os.PathLike, records: Sequence[Mapping[str, str]]) -> None:
    """Write records (instruction, input, expected ``output``, ``model_response``) as JSON."""
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    if isinstance(records, (str, Mapping)) or not isinstance(records, Sequence) or not all(
            isinstance(r, Mapping) for r in records):
        raise type_error("records", f"records must be a sequence of dicts, got {records!r:.80}")
    with open(path, "w", encoding="utf-8") as f:
        json.dump([dict(r) for r in records], f, indent=2, ensure_ascii=False)
        f.write("\n")
