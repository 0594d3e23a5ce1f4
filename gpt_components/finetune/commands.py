"""Finetuning from the command line: the subcommands ``gpt-components`` gets from this package.

``add_commands(subparsers)`` registers ``finetune-classifier``, ``classify``,
``finetune-instructions`` and ``instruction-responses``. The finetuning commands start from
weights in Hugging Face's layout of any family the project has (``--weights``: a directory, a
GPT-2 ``model.safetensors``, or a GPT-2 name to download), from a run directory of
``gpt-components train`` or a finetuned output (``--run``), or, with neither, from random weights
of a ``--preset`` with GPT-2's tokenizer (and say so); ``--lora-rank`` trains low-rank adapters
instead of the model's own weights. Each model is read with the tokenizer it comes with
(``gpt_components.machinery.sources``), which pads its batches and ends its responses with its own
end-of-text id, and its output keeps that tokenizer beside the weights. Handlers raise
``machinery.checks.ArgumentError``s whose ``parameter`` is the flag's destination (``lr``,
``out``, ``source`` for the starting model); the CLI names the flag from it.

An output directory is built whole in a hidden sibling (``.OUT.new-*``) and swapped into place
in one step (``machinery.atomic.replace_directory``): a kill at any moment leaves ``--out``
holding the earlier result or the new one, complete, never weights beside another model's
tokenizer. Ctrl-C or SIGTERM while finetuning finishes the step and saves the model trained so
far (``CommandStopped`` then carries the line to print and the exit status); a run whose loss
diverges writes nothing and names the step.

``finetune-dpo`` (the chapter-7 bonus, at the end of this file) preference-tunes the output of
``finetune-instructions`` with DPO.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="gpt-components")
>>> add_commands(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["finetune-classifier", "--lora-rank", "8", "--out", "runs/spam"])
>>> args.lora_rank, args.lora_alpha, args.weights, args.run_dir
(8, 16.0, None, None)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal as signal_module
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..fundamentals import default_device
from ..machinery.atomic import replace_directory
from ..machinery.checks import ArgumentError, check_float, check_int, renamed, value_error
from ..machinery.pretrained import save_pretrained
from ..machinery.registry import build_model, preset_config
from ..machinery.sources import (
    SourceNotFoundError,
    load_model_and_tokenizer,
    load_tokenizer_spec,
    save_tokenizer,
    tokenizer_of,
)
from ..training import (
    TrainingDivergedError,
    TrainingInterrupted,
    calc_loss_loader,
    configure_optimizer,
)
from . import classification as cls
from . import dpo, spam_data
from . import instructions as ins
from .lora import count_trainable_parameters, merge_lora, replace_linear_with_lora, save_lora

__all__ = ["add_commands", "load_start_model", "CommandStopped"]


class CommandStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``signal``, by name) ended a command after saving what it had: the
    line to print and the exit status, 128 + the signal's number as a shell reports it (130 for
    SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signal: str = "SIGINT"):
        super().__init__(message)
        self.status = 128 + signal_module.Signals[signal].value

def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the finetuning subcommands on a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "finetune-classifier",
        help="finetune a model into a spam classifier (chapter 6)",
        description="Finetune a model of any family on the SMS Spam Collection (balanced, "
        "split 70/10/20) and write the classifier, with its tokenizer, to --out; prints "
        "accuracy on the three splits.",
    )
    _start_options(p)
    _training_options(p, epochs=5, lr=5e-5, batch_size=8)
    p.add_argument("--data", help="a label<TAB>text file (default: the bundled SMS collection)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per message, longer ones cut (default: longest training text, "
                   "at most the context length)")
    p.add_argument("--trainable-blocks", type=int, default=1,
                   help="last transformer blocks that train with the head and final norm "
                   "(default 1; ignored with --train-all or --lora-rank)")
    p.add_argument("--train-all", action="store_true", help="train every parameter")
    p.set_defaults(run=finetune_classifier)

    p = subparsers.add_parser("classify", help="label a text with a finetuned classifier",
                              description="Print the label a finetuned classifier gives TEXT.")
    p.add_argument("text", help="the message to classify")
    p.add_argument("--model", required=True,
                   help="directory written by finetune-classifier (holds classifier.json)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default auto)")
    p.set_defaults(run=classify_command)

    p = subparsers.add_parser(
        "finetune-instructions",
        help="finetune a model to follow instructions (chapter 7)",
        description="Finetune a model of any family on Alpaca-style records (split 85/5/10) and "
        "write it to --out as config.json + model.safetensors (loadable by "
        "gpt_components.from_pretrained) with its tokenizer beside them.",
    )
    _start_options(p)
    _training_options(p, epochs=2, lr=5e-5, batch_size=8)
    p.add_argument("--data", help="a JSON list of instruction/input/output records "
                   "(default: the bundled 1,100 records)")
    p.add_argument("--allowed-max-length", type=int, default=None,
                   help="cut every sequence to this many tokens (default: the context length)")
    p.add_argument("--mask-prompt", action="store_true",
                   help="leave the prompt tokens out of the loss: learn only the responses")
    p.set_defaults(run=finetune_instructions)

    p = subparsers.add_parser(
        "instruction-responses",
        help="write a model's responses to the instruction test split to JSON",
        description="Generate a response for every record of the test split and write the "
        "records, expected output beside model_response, to a JSON file.",
    )
    p.add_argument("--model", required=True,
                   help="directory written by finetune-instructions or finetune-dpo, or "
                   "any model generate reads (weights in Hugging Face's layout, a run "
                   "directory), with the tokenizer it comes with")
    p.add_argument("--out", default=None,
                   help="JSON file to write (default: MODEL/test-responses.json)")
    p.add_argument("--data", help="the instruction JSON the model was finetuned on "
                   "(default: the bundled records)")
    p.add_argument("--seed", type=int, default=123,
                   help="split seed; use the one the model was finetuned with (default 123)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test records")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="most tokens per response (default 256)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default auto)")
    p.set_defaults(run=instruction_responses)

    _add_dpo_command(subparsers)


def _start_options(p: argparse.ArgumentParser) -> None:
    start = p.add_argument_group("starting model (at most one of --weights and --run)")
    start.add_argument("--weights", help="weights in Hugging Face's layout, any family (GPT-2, "
                       "Llama 3, Qwen3, Gemma 3, ...): a directory with config.json and "
                       "model.safetensors, read with the tokenizer files beside them (GPT-2's "
                       "when there are none), a GPT-2 model.safetensors, or "
                       "gpt2/gpt2-medium/... to download")
    start.add_argument("--run", dest="run_dir", metavar="RUN",
                       help="a run directory written by `gpt-components train` (any preset, "
                       "with the tokenizer it was trained with), or a finetune command's output")
    start.add_argument("--preset", default="gpt-micro",
                       help="model shape when starting from random weights, read with GPT-2's "
                       "tokenizer (default gpt-micro; any preset of `gpt-components train "
                       "--help`)")
    start.add_argument("--drop-rate", type=float, default=0.0,
                       help="dropout while finetuning (default 0.0, as in the book)")
    lora = p.add_argument_group("LoRA (appendix E)")
    lora.add_argument("--lora-rank", type=int, default=None,
                      help="train rank-R adapters on every linear layer, base weights frozen")
    lora.add_argument("--lora-alpha", type=float, default=16.0,
                      help="scale of the adapters' output (default 16)")


def _training_options(p: argparse.ArgumentParser, epochs: int, lr: float,
                      batch_size: int) -> None:
    p.add_argument("--out", required=True, help="directory to write the finetuned model to")
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training split "
                   f"(default {epochs})")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"examples per step (default {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr})")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay on weight matrices (default 0.1)")
    p.add_argument("--eval-freq", type=int, default=50,
                   help="evaluate every N steps (and after every epoch; default 50)")
    p.add_argument("--eval-iter", type=int, default=5,
                   help="batches per evaluation (default 5)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N training examples (a quick trial run)")
    p.add_argument("--seed", type=int, default=123,
                   help="seed for the split, the new weights, shuffling and dropout (default 123)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default auto)")


def _device(name: str) -> torch.device:
    if name == "auto":
        return default_device()
    try:
        return torch.device(name)
    except RuntimeError:
        raise value_error("device", f"device must be cpu, cuda, mps or auto, got {name!r}"
                          ) from None


def load_start_model(weights: str | None = None, run: str | None = None,
                     preset: str = "gpt-micro", drop_rate: float = 0.0,
                     seed: int = 123) -> tuple[nn.Module, Any, str]:
    """The model finetuning starts from, the tokenizer it comes with, and a sentence saying what
    it is."""
    if weights is not None and run is not None:
        raise value_error("weights", f"weights {weights!r} and run {run!r}: give at most one "
                                     "starting model")
    if weights is None and run is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(preset_config(preset, drop_rate=drop_rate))
        return model, load_tokenizer_spec("gpt2"), (
            f"no --weights or --run given: starting from RANDOM weights ({preset}) with GPT-2's "
            "tokenizer; the result shows the pipeline works, not what a pretrained model learns")
    if run is not None and not Path(run).is_dir():
        raise SourceNotFoundError("run", f"run {run!r} does not exist" if not Path(run).exists()
                                  else f"run {run!r} is not a directory")
    given = "weights" if run is None else "run"
    try:
        model, tokenizer, origin = load_model_and_tokenizer(weights if run is None else run,
                                                            drop_rate=drop_rate)
    except ArgumentError as error:  # what was said of the source is said of this parameter
        raise renamed(error, given) from None
    return model, tokenizer, f"starting from {origin}"


def _end_of_text(tokenizer: Any, model: nn.Module) -> int:
    """The id batches are padded with and every response ends with: the tokenizer's end of text
    (GPT-2's and Qwen3's ``<|endoftext|>``, Llama 3's ``<|end_of_text|>``, Gemma 3's ``<eos>``)."""
    try:
        end = tokenizer.eot_token
    except AttributeError:
        raise value_error("tokenizer", "the model's tokenizer has no end-of-text token "
                                       "(<|endoftext|>, or the eos_token of its "
                                       "tokenizer_config.json), which finetuning pads with and "
                                       "ends every response with") from None
    vocab = model.cfg.vocab_size
    if not 0 <= end < vocab:
        raise value_error("tokenizer", f"the tokenizer's end-of-text id {end} is outside the "
                                       f"model's vocab_size={vocab}: the model was not trained "
                                       f"with this tokenizer")
    return end


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:  # None is a flag left out (its default), never a value to mention
        if getattr(args, name) is not None:
            check_int(name, getattr(args, name), low=1)


def _check_training_numbers(args: argparse.Namespace) -> None:
    """The real-valued flags of the finetuning commands, before any data or model is read."""
    check_float("lr", args.lr, low=0, low_open=True)
    check_float("weight_decay", args.weight_decay, low=0)
    check_float("drop_rate", args.drop_rate, low=0, high=1, high_open=True)
    check_float("lora_alpha", args.lora_alpha)
    check_int("seed", args.seed, low=0)
    _check_out(args.out)


def _check_out(out: str) -> None:
    """``--out`` must be a directory or a new path: refused before any work, not after."""
    if Path(out).exists() and not Path(out).is_dir():
        raise value_error("out", f"out {out!r} is a file: give a directory to write the model "
                                 "to (a new one, or an earlier output to replace)")


def _apply_lora(model: nn.Module, args: argparse.Namespace, g: torch.Generator) -> None:
    if args.lora_rank is not None:
        replace_linear_with_lora(model, args.lora_rank, args.lora_alpha, generator=g)


def _log(record: dict) -> None:
    if "val_loss" in record:
        shown = {k: v for k, v in record.items() if k not in ("epoch", "step")}
        text = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in shown.items())
        print(f"epoch {record['epoch']} step {record['step']}: {text}", flush=True)


def _write_metrics(out: Path, records: list[dict], summary: dict) -> None:
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _lora_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """What ``summary.json`` and ``classifier.json`` record of the LoRA flags (None: no LoRA)."""
    return None if args.lora_rank is None else {"rank": args.lora_rank, "alpha": args.lora_alpha}


def _save_finetuned(directory: Path, model: nn.Module, tok: Any, lora: dict[str, Any] | None,
                    save_model: Callable[[], Any]) -> None:
    """The finetuned model into ``directory``: with LoRA, its adapters first (``lora.safetensors``)
    and then the merged weights (``save_model``), and the tokenizer it was trained with."""
    if lora is not None:
        save_lora(model, directory / "lora.safetensors")
        merge_lora(model)
    save_model()
    save_tokenizer(tok, directory)


def _write_output(out: Path, write: Callable[[Path], None]) -> None:
    """Build the output in a hidden sibling of ``out`` with ``write(directory)``, then swap it
    into place whole: a kill at any moment leaves ``out`` as it was or complete."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*out.parent.glob(f".{out.name}.new-*"),
                     *out.parent.glob(f".{out.name}.old-*")]:  # of a run killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        mask = os.umask(0)
        os.umask(mask)
        building.chmod(0o777 & ~mask)  # mkdtemp's 0700 would lock out others the old had
        write(building)
        replace_directory(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _train_or_stop(train: Callable[[], list[dict]]) -> tuple[list[dict], TrainingInterrupted |
                                                             None]:
    """The records of ``train()``; after Ctrl-C or SIGTERM, those so far and the signal. A
    diverged loss is one line naming the step."""
    try:
        return train(), None
    except TrainingInterrupted as stop:
        return stop.records, stop
    except TrainingDivergedError as error:
        raise TrainingDivergedError(f"{error}: training diverged, nothing was written (a "
                                    "lower --lr may help)") from None


def _stopped(stop: TrainingInterrupted | None, out: Path, use: str) -> None:
    """After an output written on Ctrl-C or SIGTERM: say what it holds and how to use it."""
    if stop is None:
        return
    what = "interrupted" if stop.signal == "SIGINT" else f"stopped by {stop.signal}"
    raise CommandStopped(f"{what} after step {stop.step}: saved the model trained so far to "
                         f"{out}/ (not evaluated); use it with: {use}", stop.signal)


def finetune_classifier(args: argparse.Namespace) -> None:
    """Handler of ``finetune-classifier``."""
    _check_positive(args, "epochs", "batch_size", "eval_freq", "eval_iter", "limit",
                    "max_length", "lora_rank")
    _check_training_numbers(args)
    check_int("trainable_blocks", args.trainable_blocks, low=0)
    device = _device(args.device)
    model, tok, origin = load_start_model(args.weights, args.run_dir, args.preset,
                                          args.drop_rate, args.seed)
    print(origin, flush=True)
    pad = _end_of_text(tok, model)
    splits = spam_data.spam_splits(args.data, seed=args.seed)
    train_records = splits.train[: args.limit]
    context = model.cfg.context_length
    longest = max(len(tok.encode(r.text)) for r in train_records)
    max_length = min(args.max_length or longest, context)
    datasets = [spam_data.SpamDataset(part, tok, max_length=max_length, pad_token_id=pad)
                for part in (train_records, splits.validation, splits.test)]
    g = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(datasets[0], args.batch_size, shuffle=True, drop_last=True,
                              generator=g)
    val_loader, test_loader = (DataLoader(d, args.batch_size) for d in datasets[1:])
    if len(train_loader) == 0:
        raise value_error("batch_size", f"batch_size {args.batch_size} exceeds the "
                                        f"{len(datasets[0])} training examples")
    blocks = None if args.train_all or args.lora_rank else args.trainable_blocks
    cls.make_classifier(model, len(spam_data.SPAM_LABELS), blocks, generator=g)
    _apply_lora(model, args, g)
    model.to(device)
    print(f"{count_trainable_parameters(model):,} trainable parameters; "
          f"{len(datasets[0])} training messages of at most {max_length} tokens", flush=True)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    records, stop = _train_or_stop(lambda: cls.train_classifier_simple(
        model, train_loader, val_loader, optimizer, device, args.epochs, args.eval_freq,
        args.eval_iter, seed=args.seed, on_record=_log))
    model.eval()
    accuracy = None if stop else {
        name: cls.classification_accuracy(loader, model, device)
        for name, loader in (("train", train_loader), ("validation", val_loader),
                             ("test", test_loader))}
    out = Path(args.out)
    lora = _lora_settings(args)

    def write(directory: Path) -> None:
        _save_finetuned(directory, model, tok, lora, lambda: cls.save_classifier(
            model, directory, spam_data.SPAM_LABELS, max_length, started=origin, lora=lora,
            accuracy=accuracy))
        _write_metrics(directory, records, {"started": origin, "accuracy": accuracy,
                                            "lora": lora, **_stop_note(stop)})

    _write_output(out, write)
    _stopped(stop, out, f"gpt-components classify --model {out} TEXT")
    print(" ".join(f"{k} accuracy {v:.2%}" for k, v in accuracy.items()))
    print(f"classifier written to {out}/")


def _stop_note(stop: TrainingInterrupted | None) -> dict:
    return {} if stop is None else {"stopped": {"signal": stop.signal, "after_step": stop.step}}


def classify_command(args: argparse.Namespace) -> None:
    """Handler of ``classify``."""
    if not Path(args.model).is_dir():
        raise SourceNotFoundError("model", f"model {args.model!r} is not a directory written by "
                                           "finetune-classifier")
    try:
        model, config = cls.load_classifier(args.model, _device(args.device))
        tokenizer = tokenizer_of(args.model)
    except ArgumentError as error:  # about the directory classify was given: --model
        raise renamed(error, "model") from None
    except FileNotFoundError as error:
        raise SourceNotFoundError("model", f"model: {error}") from None
    except (OSError, ValueError) as error:
        raise value_error("model", f"model: {error}") from None
    print(cls.classify(args.text, model, tokenizer, labels=config["labels"],
                       max_length=config.get("max_length")))


def finetune_instructions(args: argparse.Namespace) -> None:
    """Handler of ``finetune-instructions``."""
    _check_positive(args, "epochs", "batch_size", "eval_freq", "eval_iter", "limit",
                    "allowed_max_length", "lora_rank")
    _check_training_numbers(args)
    device = _device(args.device)
    data = ins.load_instruction_data(args.data)
    model, tok, origin = load_start_model(args.weights, args.run_dir, args.preset,
                                          args.drop_rate, args.seed)
    print(origin, flush=True)
    splits = ins.instruction_splits(data, seed=args.seed)
    context = model.cfg.context_length
    allowed = min(args.allowed_max_length or context, context)
    collate = partial(ins.instruction_collate, pad_token_id=_end_of_text(tok, model),
                      allowed_max_length=allowed, mask_prompt=args.mask_prompt)
    g = torch.Generator().manual_seed(args.seed)
    train_set = ins.InstructionDataset(splits.train[: args.limit], tok)
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True,
                              collate_fn=collate, generator=g)
    val_loader = DataLoader(ins.InstructionDataset(splits.validation, tok), args.batch_size,
                            collate_fn=collate)
    if len(train_loader) == 0:
        raise value_error("batch_size", f"batch_size {args.batch_size} exceeds the "
                                        f"{len(train_set)} training records")
    if args.lora_rank is None:
        model.requires_grad_(True)
    _apply_lora(model, args, g)
    model.to(device)
    print(f"{count_trainable_parameters(model):,} trainable parameters; "
          f"{len(train_set)} training records, cut to {allowed} tokens", flush=True)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    records, stop = _train_or_stop(lambda: ins.train_instructions(
        model, train_loader, val_loader, optimizer, device, args.epochs, args.eval_freq,
        args.eval_iter, seed=args.seed, on_record=_log))
    model.eval()
    losses = None
    if stop is None:
        with torch.no_grad():
            losses = {"train": calc_loss_loader(train_loader, model, device),
                      "validation": calc_loss_loader(val_loader, model, device)}
    out = Path(args.out)
    lora = _lora_settings(args)

    def write(directory: Path) -> None:
        _save_finetuned(directory, model, tok, lora, lambda: save_pretrained(model, directory))
        _write_metrics(directory, records, {"started": origin, "loss": losses, "lora": lora,
                                            "seed": args.seed, "mask_prompt": args.mask_prompt,
                                            **_stop_note(stop)})

    _write_output(out, write)
    _stopped(stop, out, f"gpt-components instruction-responses --model {out}")
    print(" ".join(f"{k} loss {v:.3f}" for k, v in losses.items()))
    print(f"model written to {out}/ (config.json, model.safetensors); next: "
          f"gpt-components instruction-responses --model {out}")


def instruction_responses(args: argparse.Namespace) -> None:
    """Handler of ``instruction-responses``."""
    _check_positive(args, "limit", "max_new_tokens")
    device = _device(args.device)
    model, tokenizer, _ = load_model_and_tokenizer(args.model)  # "source" is --model here
    model.to(device)
    test = ins.instruction_splits(ins.load_instruction_data(args.data), seed=args.seed).test
    test = test[: args.limit]

    def show(i: int, record: dict) -> None:
        if i < 3:
            print(f"### {record['instruction']}\nexpected: {record['output']}\n"
                  f"model:    {record['model_response']}\n", flush=True)

    results = ins.generate_responses(model, test, tokenizer, max_new_tokens=args.max_new_tokens,
                                     progress=show)
    out = Path(args.out) if args.out else Path(args.model) / "test-responses.json"
    ins.write_responses(out, results)
    print(f"{len(results)} responses written to {out}")


# ---------------------------------------------------------------- finetune-dpo (chapter-7 bonus)

def _add_dpo_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune-dpo",
        help="preference-tune an instruction model with DPO (chapter-7 bonus)",
        description="Direct preference optimisation on chosen/rejected response pairs (split "
        "85/5/10 like the instruction records): the model learns to prefer the chosen "
        "response against a frozen copy of itself. Start from a finetune-instructions output "
        "(--run or --weights); writes the model to --out as config.json + model.safetensors, "
        "with metrics.jsonl and dpo.png (loss and reward margins).",
    )
    _start_options(p)
    _training_options(p, epochs=1, lr=5e-6, batch_size=8)
    book = {"weight_decay": (0.01, "AdamW weight decay on weight matrices (default 0.01, the "
                             "book's for DPO)"),
            "eval_freq": (5, "evaluate every N steps (and after every epoch; default 5)")}
    for action in p._actions:
        if action.dest in book:
            action.default, action.help = book[action.dest]
    p.add_argument("--beta", type=float, default=0.1,
                   help="how far the policy may move from the reference: the DPO temperature "
                   "(default 0.1)")
    p.add_argument("--data", help="a JSON list of instruction records with 'chosen' and "
                   "'rejected' responses (default: the bundled 1,100 pairs)")
    p.add_argument("--allowed-max-length", type=int, default=None,
                   help="cut every sequence to this many tokens (default: the context length)")
    p.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=True,
                   help="score only the response tokens, not the prompt (default: on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=finetune_dpo)


def _dpo_datasets(splits, tok, allowed: int, limit: int | None):
    """Training and validation pairs; a pair whose prompt fills ``allowed`` has nothing to score."""
    parts = []
    for records in (splits.train[:limit], splits.validation):
        dataset = dpo.PreferenceDataset(records, tok)
        fits = [i for i, item in enumerate(dataset) if len(item["prompt"]) < allowed]
        parts.append((Subset(dataset, fits), len(dataset) - len(fits)))
    return parts


def _dpo_progress(total: int, enabled: bool):
    """A tqdm bar over the steps (or nothing) and the record callback that moves it."""
    bar = None
    if enabled:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="dpo", unit="step", dynamic_ncols=True)

    def on_record(record: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        if "val_loss" in record:
            line = (f"epoch {record['epoch']} step {record['step']}: "
                    f"train loss {record['train_loss']:.3f}, val loss {record['val_loss']:.3f}, "
                    f"train reward margin {record['train_reward_margin']:.3f}, "
                    f"val reward margin {record['val_reward_margin']:.3f}, "
                    f"val reward accuracy {record['val_reward_accuracy']:.0%}")
            (bar.write if bar is not None else print)(line)

    return bar, on_record


def finetune_dpo(args: argparse.Namespace) -> None:
    """Handler of ``finetune-dpo``."""
    _check_positive(args, "epochs", "batch_size", "eval_freq", "eval_iter", "limit",
                    "allowed_max_length", "lora_rank")
    check_float("beta", args.beta, low=0, low_open=True)
    _check_training_numbers(args)
    device = _device(args.device)
    if args.data is not None and not Path(args.data).is_file():
        raise SourceNotFoundError("data", f"data {args.data!r} is not a file")
    try:
        data = dpo.load_preference_data(args.data)
    except (ValueError, TypeError) as error:
        raise value_error("data", f"data: {error}") from None
    model, tok, origin = load_start_model(args.weights, args.run_dir, args.preset,
                                          args.drop_rate, args.seed)
    print(origin, flush=True)
    splits = dpo.preference_splits(data, seed=args.seed)
    context = model.cfg.context_length
    allowed = min(args.allowed_max_length or context, context)
    (train_set, dropped), (val_set, val_dropped) = _dpo_datasets(splits, tok, allowed, args.limit)
    if len(train_set) == 0:  # before torch's sampler says "num_samples=0"
        parameter = "allowed_max_length" if allowed < context else "context_length"
        raise value_error(parameter, f"every training pair's prompt fills the {allowed} tokens "
                                     f"allowed (the model's context_length is {context}): no "
                                     "response token is left to score; raise "
                                     "--allowed-max-length or start from a model with a longer "
                                     "context")
    collate = partial(dpo.preference_collate, pad_token_id=_end_of_text(tok, model),
                      allowed_max_length=allowed, mask_prompt_tokens=args.mask_prompt)
    g = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True,
                              collate_fn=collate, generator=g)
    val_loader = DataLoader(val_set, args.batch_size, collate_fn=collate)
    if len(train_loader) == 0:
        raise value_error("batch_size", f"batch_size {args.batch_size} exceeds the "
                                        f"{len(train_set)} training pairs")
    if len(val_set) == 0:
        raise value_error("data", "data: the validation split holds no pair that fits "
                                  f"{allowed} tokens")
    reference = copy.deepcopy(model).requires_grad_(False).eval()  # before any adapter
    if args.lora_rank is None:
        model.requires_grad_(True)
    _apply_lora(model, args, g)
    model.to(device)
    reference.to(device)
    left_out = f" ({dropped} + {val_dropped} left out: prompt fills the {allowed} tokens)" \
        if dropped + val_dropped else ""
    print(f"{count_trainable_parameters(model):,} trainable parameters; {len(train_set)} "
          f"training and {len(val_set)} validation pairs, cut to {allowed} tokens{left_out}",
          flush=True)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    bar, on_record = _dpo_progress(len(train_loader) * args.epochs, not args.no_progress)
    try:
        records, stop = _train_or_stop(lambda: dpo.train_model_dpo_simple(
            model, reference, train_loader, val_loader, optimizer, device, args.epochs,
            args.beta, args.eval_freq, args.eval_iter, seed=args.seed, on_record=on_record))
    finally:
        if bar is not None:
            bar.close()
    scores = validation = None
    if stop is None:
        scores = dpo.compute_dpo_loss_loader(val_loader, model.eval(), reference, args.beta)
        validation = {**scores._asdict(), "reward_margin": scores.reward_margin}
    out = Path(args.out)
    lora = _lora_settings(args)

    def write(directory: Path) -> None:
        _save_finetuned(directory, model, tok, lora, lambda: save_pretrained(model, directory))
        _write_metrics(directory, records, {"started": origin, "validation": validation,
                                            "beta": args.beta, "lora": lora, "seed": args.seed,
                                            "mask_prompt": args.mask_prompt,
                                            **_stop_note(stop)})
        if records:
            dpo.plot_dpo(records, directory / "dpo.png")

    _write_output(out, write)
    data_flag = f" --data {args.data}" if args.data else ""
    _stopped(stop, out, f"gpt-components instruction-responses --model {out}{data_flag}")
    print(f"validation ({len(val_set)} pairs): loss {scores.loss:.3f}, reward margin "
          f"{scores.reward_margin:.3f}, reward accuracy {scores.reward_accuracy:.1%}")
    print(f"model written to {out}/ (config.json, model.safetensors, metrics.jsonl, dpo.png); "
          f"next: gpt-components instruction-responses --model {out}{data_flag}")
