"""The ``gpt-components`` command line: one subcommand per job.

- ``info``: versions and devices.
- ``train``: pretrain a preset on a text corpus (default: a small GPT on the bundled
  ``the-verdict.txt``), with a progress bar, evaluations with a sample continuation, a run
  directory (``config.json``, checkpoints, ``metrics.jsonl``, ``loss.png``) and ``--resume``.
  Under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel, or with the
  model sharded across the processes (FSDP2) with ``--strategy fsdp``.
- ``generate``: continue a prompt from a run directory or weights of any family, streaming
  tokens, with the tokenizer the model comes with (see ``gpt_components.machinery.sources``).
- ``inspect``: one self-contained HTML page (and ``--png`` pictures) of what a model does with
  a prompt (see ``gpt_components.inspect.inspection``).
- ``finetune-classifier``, ``classify``, ``finetune-instructions``, ``instruction-responses``:
  chapters 6 and 7 (see ``gpt_components.finetune.commands``).
- ``serve``: an OpenAI-compatible server with a chat page (see
  ``gpt_components.serving.server``); ``chat``: a conversation in the terminal (see
  ``gpt_components.serving.terminal``).
- ``evaluate-math``: grade a model's answers to MATH-500 (the sequel's chapter 3; see
  ``gpt_components.reasoning.evaluate``), resumable, accuracy by subject and level.

This module parses flags and prints; the run directory is ``machinery.rundir``'s, loading is
``machinery.sources``'. A bad argument is one line naming its flag, exit status 2: the library
raises ``machinery.checks.ArgumentError`` carrying ``error.parameter``, and ``flag_of`` finds the
command's flag for it (``PARAMETER_FLAGS`` lists the names that differ); no message is parsed.
Ctrl-C or SIGTERM during training saves a checkpoint and prints the command that resumes it
(exit status 130 or 143).

>>> main(["info"])  # doctest: +ELLIPSIS
gpt_components ...
torch ...
tiktoken ...
devices: cpu...
0
"""

from __future__ import annotations

# Every import at the top: ``import gpt_components`` (which any submodule import runs first)
# already imports torch and the whole public API, so a lazy import here would save no time.
import argparse
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tiktoken
import torch
import torch.distributed as dist

from . import __version__, generation
from .corpus import TokenWindows, prepare_corpus
from .finetune.commands import CommandStopped
from .finetune.commands import add_commands as add_finetune_commands
from .fundamentals import available_devices
from .inspect.inspection import inspect_prompt
from .inspect.inspection_report import write_pngs, write_report
from .machinery import rundir
from .machinery.checkpoint import (
    CheckpointWriteError,
    RunLockedError,
    latest_checkpoint,
    load_checkpoint,
)
from .machinery.checks import (
    ArgumentError,
    check_float,
    check_int,
    check_str,
    renamed,
    value_error,
)
from .machinery.registry import FAMILIES, build_model, family_of, preset_config
from .machinery.resources import resource_path
from .machinery.sources import TOKENIZER_FILES, load_model_and_tokenizer, load_tokenizer_spec
from .modern.chat import chat_format_for
from .reasoning.evaluate import evaluate_math, format_math_summary, read_math_records
from .reasoning.grpo_command import add_grpo_command
from .reasoning.math500 import load_math_problems
from .serving import engine_loop
from .serving import server as serving_server
from .serving.terminal import chat_in_terminal
from .training import TrainConfig, TrainingDivergedError, TrainingInterrupted, lr_at, train

__all__ = ["main", "build_parser", "flag_of", "PARAMETER_FLAGS"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _info(_: argparse.Namespace) -> None:
    print(f"gpt_components {__version__}")
    print(f"torch {torch.__version__}")
    print(f"tiktoken {tiktoken.__version__}")
    print("devices: " + ", ".join(available_devices()))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        name = available_devices()[0]
    if name not in available_devices():
        raise CLIError(f"--device must be one of auto, {', '.join(available_devices())}, "
                       f"got {name!r}")
    return torch.device(name)


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the torchrun process group when launched by torchrun: (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def _same_on_all_ranks(value: Any, world: int) -> Any:
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# With --resume the run's saved configuration decides everything else; these may be given.
RESUME_FLAGS = ("steps", "device", "cache_dir", "no_progress")


def _resume_command(run_dir: Path) -> str:
    """The command that resumes ``run_dir``: under torchrun, with this run's process count."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return f"gpt-components train --resume {shlex.quote(str(run_dir))}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = f"--nnodes={world // per_node} " if world != per_node else ""
    return (f"torchrun {nodes}--nproc_per_node={per_node} -m gpt_components.cli train "
            f"--resume {shlex.quote(str(run_dir))}")


def _corpus(corpus_path: str, tokenizer: Any, cache_dir: Path, rank: int, world: int) -> Any:
    def tokenized() -> Any:
        return prepare_corpus(corpus_path, tokenizer, cache_dir)

    try:
        corpus = tokenized() if rank == 0 else None
        _same_on_all_ranks(None, world)  # the others wait for rank 0's token file
        return corpus or tokenized()
    except OSError as error:
        where = Path(error.filename or corpus_path).absolute()
        if cache_dir.absolute() in (where, *where.parents):
            raise CLIError(f"--cache-dir {str(cache_dir)!r}: cannot keep the tokenized corpus "
                           f"there ({error.strerror or error}): give a writable --cache-dir"
                           ) from None
        raise CLIError(f"--corpus: {error}") from None
    except ValueError as error:
        raise CLIError(f"--corpus: {error}") from None


def _refuse_changes_on_resume(args: argparse.Namespace) -> None:
    refused = [f"--{name.replace('_', '-')}" for name in sorted(getattr(args, "given", ()))
               if name not in RESUME_FLAGS and name != "resume"]
    if refused:
        raise CLIError(f"{', '.join(refused)} cannot be changed by --resume (the run keeps the "
                       f"configuration it was started with; with --resume only "
                       f"{', '.join('--' + f.replace('_', '-') for f in RESUME_FLAGS)} may be "
                       "given): start a new run with --run-dir to train differently")


def _new_config(args: argparse.Namespace, tokenizer: Any) -> tuple[Any, TrainConfig]:
    """The model and training configs the flags of a new run describe (errors name the flag
    through the parameter they carry)."""
    if args.steps is not None:  # the library's None ("epochs decide") is no flag's value
        check_int("max_steps", args.steps, low=1)
    check_float("grad_clip", args.grad_clip, low=0)  # on the command line 0 means no clipping
    model_cfg = preset_config(
        args.preset, vocab_size=tokenizer.n_vocab, drop_rate=args.dropout,
        **({"tie_weights": True} if args.tie_weights else {}),
        **({} if args.context_length is None else {"context_length": args.context_length}))
    train_cfg = TrainConfig(
        batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=args.epochs,
        max_steps=args.steps, lr=args.lr, min_lr=args.min_lr,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip or None, val_fraction=args.val_fraction,
        stride=args.stride, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
        checkpoint_interval=args.checkpoint_interval, seed=args.seed,
        compile=args.compile, bf16=args.bf16, sample_prompt=args.prompt,
        sample_tokens=args.sample_tokens, strategy=args.strategy)
    train_cfg.validate()
    return model_cfg, train_cfg


def _extend(args: argparse.Namespace, run_dir: Path, train_cfg: TrainConfig, total: int,
            reached: int) -> TrainConfig:
    """The train config of a resume: ``--steps`` sets a new total; a finished run says so."""
    if args.steps is None:
        if reached >= total:
            raise CLIError(f"--resume: the run {str(run_dir)!r} is finished (step {reached} of "
                           f"{total}): to train it longer, give a new total, for example "
                           f"{_resume_command(run_dir)} --steps {2 * total}")
        return train_cfg
    if args.steps <= reached:
        raise CLIError(f"--steps must be greater than the {reached} steps the run has made "
                       f"(a resume trains on from its last checkpoint), got {args.steps}")
    if args.steps != total:
        def rate(step: int, steps: int) -> float:
            return lr_at(step, peak_lr=train_cfg.lr, min_lr=train_cfg.min_lr,
                         warmup_steps=train_cfg.warmup_steps, total_steps=steps)

        print(f"--steps {args.steps}: the run goes on to {args.steps} steps instead of {total}; "
              f"the cosine schedule is re-laid over {args.steps} steps, so step {reached + 1} "
              f"trains at {rate(reached, args.steps):.3g} (the {total}-step schedule gave "
              f"{rate(reached, total):.3g})")
    return dataclasses.replace(train_cfg, max_steps=args.steps)


@dataclasses.dataclass
class _Run:
    """What a train command works on: the run directory and what it was started with."""

    run_dir: Path
    corpus: str
    tokenizer: str  # the spec load_tokenizer_spec reads
    saved: rundir.RunConfig | None  # a resume's saved configuration; None for a new run
    started: bool = False  # set by the first finished step: from then on the run is kept


def _train(args: argparse.Namespace) -> None:
    device = _pick_device(args.device)
    rank, world, device = _distributed(device)
    if args.resume:
        _refuse_changes_on_resume(args)
        run_dir = Path(args.resume)
        saved = rundir.read_config(run_dir)
        run = _Run(run_dir, saved.corpus, rundir.tokenizer_spec(run_dir, saved.tokenizer), saved)
    else:
        corpus_path = str(Path(args.corpus).resolve()) if args.corpus else str(
            resource_path("the-verdict.txt"))
        stamp = _same_on_all_ranks(time.strftime("%Y%m%d-%H%M%S"), world)
        run_dir = Path(args.run_dir or f"runs/{Path(corpus_path).stem}-{stamp}")
        tokenizer = args.tokenizer if args.tokenizer is not None else family_of(
            preset_config(args.preset)).tokenizer  # what the preset's family declares
        run = _Run(run_dir, corpus_path, tokenizer, None)
    created = not run_dir.exists()
    # The folders a new run creates above it (runs/ on a first run): a failed start removes them.
    made_above = [p for p in run_dir.parents if not p.exists()] if created else []
    # The one lock of the command, from the first check to the last checkpoint (train() takes
    # it again, which nests).
    with rundir.hold(run_dir, holder=rank == 0):
        try:
            _train_locked(args, run, rank, world, device)
        except BaseException as error:
            if created and not run.started and rank == 0:  # a failed start leaves no run
                shutil.rmtree(run_dir, ignore_errors=True)
                for folder in made_above:  # innermost first; only if still empty
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            if isinstance(error, KeyboardInterrupt) and not isinstance(error, CommandStopped):
                _explain_stop(error, run, rank)
            raise


def _explain_stop(error: KeyboardInterrupt, run: _Run, rank: int = 0) -> None:
    signal = error.signal if isinstance(error, TrainingInterrupted) else "SIGINT"
    if rank != 0:  # under torchrun, rank 0 says it for the whole run
        raise CommandStopped("", signal) from None
    if isinstance(error, TrainingInterrupted):
        what = "interrupted" if signal == "SIGINT" else f"stopped by {signal}"
        raise CommandStopped(f"{what}: saved the checkpoint of step {error.step} "
                             f"({str(error.checkpoint)!r}); resume with: "
                             f"{_resume_command(run.run_dir)}", signal) from None
    if not run.started and not rundir.holds_run(run.run_dir):
        raise CommandStopped("interrupted before training began; no run was kept") from None
    last = latest_checkpoint(run.run_dir)
    kept = (f"the run keeps its checkpoint {str(last)!r}" if last else
            "the run has no checkpoint yet (a resume restarts it from step 0)")
    raise CommandStopped(f"aborted: {kept}; resume with: {_resume_command(run.run_dir)}") from None


def _train_locked(args: argparse.Namespace, run: _Run, rank: int, world: int,
                  device: torch.device) -> None:
    run_dir, saved = run.run_dir, run.saved
    if saved is None and rundir.holds_run(run_dir):
        stopped = "" if latest_checkpoint(run_dir) else (
            " (it stopped before its first checkpoint: a resume restarts it from step 0)")
        raise CLIError(f"--run-dir {str(run_dir)!r} already holds a run{stopped}: continue it "
                       f"with {_resume_command(run_dir)} or choose another directory")
    tokenizer = load_tokenizer_spec(run.tokenizer)
    if saved is None:
        model_cfg, train_cfg = _new_config(args, tokenizer)
    else:
        model_cfg, train_cfg = saved.model, TrainConfig(**saved.train)
    cache_dir = Path(args.cache_dir or run_dir.parent / ".corpus-cache")
    corpus = _corpus(run.corpus, tokenizer, cache_dir, rank, world)
    train_tokens, val_tokens = corpus.split(train_cfg.val_fraction)
    rundir.check_training_fits(model_cfg, train_cfg.batch_size, len(train_tokens), device)
    if saved is not None:
        windows = len(TokenWindows(train_tokens, model_cfg.context_length, train_cfg.stride))
        reached, total = rundir.resume_point(run_dir, windows, saved.train, world)
        if args.steps is None and reached >= total:
            # A finished run is not trained again; a damaged checkpoint still says so first.
            load_checkpoint(run_dir).load_into(build_model(model_cfg))
        train_cfg = _extend(args, run_dir, train_cfg, total, reached)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = saved.tokenizer if saved else rundir.keep_tokenizer(run.tokenizer, run_dir)
        rundir.write_config(run_dir, model_cfg, dataclasses.asdict(train_cfg),
                            corpus=run.corpus, tokenizer=kept, corpus_tokens=len(corpus))
        print(f"run directory: {run_dir} | device: {device} x{world} | corpus: {len(corpus):,} "
              f"tokens ({len(train_tokens):,} train, {len(val_tokens):,} validation)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_cfg.seed)
        model = build_model(model_cfg)

    def first_step(record: dict) -> None:
        run.started = True

    records = train(model, train_tokens, val_tokens, train_cfg, run_dir,
                    context_length=model_cfg.context_length, device=device,
                    tokenizer=tokenizer, resume=saved is not None,
                    progress=not args.no_progress, on_step=first_step)
    if rank == 0:
        last = [r for r in records if "val_loss" in r][-1]
        where = shlex.quote(str(run_dir))
        print(f"done: step {last['step']}, train loss {last['train_eval_loss']:.3f}, "
              f"validation loss {last['val_loss']:.3f}; the run is in {run_dir} (loss curve: "
              f"{run_dir / 'loss.png'})\n"
              f"next: gpt-components generate {where} --prompt \"...\"   (continue a prompt)\n"
              f"      {_resume_command(run_dir)} --steps {2 * last['step']}   (train it longer)")
    if world > 1:
        dist.destroy_process_group()


def _load_for_generation(source: str, tokenizer_spec: str | None,
                         device: torch.device) -> tuple:
    model, tokenizer, _ = load_model_and_tokenizer(source, tokenizer_spec)
    return model.to(device), tokenizer


_BYTES_PER_GENERATED_TOKEN = 96


def _generate(args: argparse.Namespace) -> None:
    check_int("seed", args.seed, low=0)  # every flag the model does not decide, before loading it
    check_int("max_new_tokens", args.max_new_tokens, low=0)
    generation.check_sampling(args.temperature, args.top_k, args.top_p)
    device = _pick_device(args.device)
    model, tokenizer = _load_for_generation(args.source, args.tokenizer, device)
    generator = None
    if args.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    ids, stops = _prompt_ids(args, tokenizer, model)
    if not ids:
        raise CLIError("--prompt must encode to at least one token, got an empty prompt")
    idx = torch.tensor([ids], device=device)
    stream = generation.generate_stream(model, idx, args.max_new_tokens, args.context_size,
                             args.temperature, args.top_k, args.top_p, args.eos_id,
                             not args.no_cache, generator)
    # The sequence grows by one int64 a token (copied as it grows), the decoded ids and text too.
    need = (len(ids) + args.max_new_tokens) * _BYTES_PER_GENERATED_TOKEN
    available = rundir.available_memory(device if device.type == "cuda"
                                        else torch.device("cpu"))
    if available is not None and need > available:
        raise CLIError(f"--max-new-tokens {args.max_new_tokens} needs about {need / 1e9:.1f} GB "
                       f"to hold the tokens and their text, more than the "
                       f"{available / 1e9:.1f} GB available: ask for fewer")
    if not args.chat:  # a continuation follows its prompt; a chat answer stands alone
        print(args.prompt, end="", flush=True)

    produced: list[int] = []
    shown = ""
    for step in stream:
        if int(step[0, 0]) in stops:  # the end of the answer's turn, not part of it
            break
        produced.append(int(step[0, 0]))
        text = tokenizer.decode(produced)
        if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            print(text[len(shown):], end="", flush=True)
            shown = text
    print(tokenizer.decode(produced)[len(shown):])


def _prompt_ids(args: argparse.Namespace, tokenizer: Any,
                model: torch.nn.Module) -> tuple[list[int], set[int]]:
    """The ids generation continues, and the ids that end it early (besides --eos-id).

    With --chat, --prompt is a user message (after --system, if given) in the chat format of the
    model's tokenizer, with an open assistant turn; the format's end-of-turn ids stop the answer.
    A chat longer than the context is refused (generation keeps the window's last tokens, which
    would cut the chat's header off the front); one whose answer would push it out, warned of.
    """
    if args.system is not None and not args.chat:
        raise CLIError("--system is the system message of a chat: give it with --chat")
    if not args.chat:
        return tokenizer.encode(args.prompt, allowed_special={"<|endoftext|>"}), set()
    try:
        chat = chat_format_for(tokenizer)
    except ValueError:
        raise CLIError("--chat needs a tokenizer with a chat format (the special tokens of Llama "
                       "3's, Qwen3's ChatML or Gemma 3's), and this model's has none: leave out "
                       "--chat to continue --prompt as plain text") from None
    messages = [{"role": "user", "content": args.prompt}]
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    ids = chat.encode(tokenizer, messages)
    context = model.cfg.context_length
    if args.context_size is not None and 0 < args.context_size < context:
        context = args.context_size
    if len(ids) > context:
        raise CLIError(f"--prompt with --chat makes a chat of {len(ids)} tokens, longer than the "
                       f"context of {context} tokens: its header would be cut off, and the "
                       "model would not see a chat; shorten --prompt or --system")
    if len(ids) + args.max_new_tokens > context:
        warnings.warn(f"the chat's {len(ids)} tokens and --max-new-tokens {args.max_new_tokens} "
                      f"exceed the context of {context} tokens: after "
                      f"{context - len(ids)} answer tokens the chat's first tokens leave the "
                      "window the model sees", stacklevel=2)
    return ids, set(chat.stop_ids(tokenizer))


def _inspect(args: argparse.Namespace) -> None:
    check_int("top_k", args.top_k, low=1)  # before the model is loaded
    model, tokenizer = _load_for_generation(args.source, args.tokenizer,
                                            _pick_device(args.device))
    seen = inspect_prompt(model, tokenizer, args.prompt, top_k=args.top_k)
    print(f"wrote {write_report(seen, args.out)} ({len(seen.token_ids)} tokens, "
          f"{seen.n_layers} layers x {seen.n_heads} heads"
          + (f", by layer {'/'.join(map(str, seen.heads))}" if seen.heads else "") + ")")
    if seen.has_sinks:  # GPT-OSS: the share of attention its heads' sinks took
        print(seen.model_summary.partition("; ")[2])
    for path in write_pngs(seen, args.png) if args.png else []:
        print(f"wrote {path}")


def _evaluate_math(args: argparse.Namespace) -> None:
    check_int("limit", args.limit, low=1, optional=True)  # every flag, before the model loads
    check_int("samples", args.samples, low=1)
    check_int("max_new_tokens", args.max_new_tokens, low=1)
    check_int("seed", args.seed, low=0)
    generation.check_sampling(args.temperature, None, args.top_p)
    problems = load_math_problems(args.dataset)[:args.limit]
    named = Path(args.dataset).stem if args.dataset.endswith((".json", ".jsonl")) else args.dataset
    out = Path(args.out or f"{named}-{Path(args.source).name}.jsonl")
    read_math_records(out)  # a file that is no evaluation's: refused before the model loads
    device = _pick_device(args.device)
    model, tokenizer, origin = load_model_and_tokenizer(args.source, args.tokenizer)
    if origin.startswith("weights"):
        _check_has_tokenizer(args, model)
    model = model.to(device)
    print(f"evaluate-math: {len(problems)} problems of {args.dataset}, {args.samples} sample(s) "
          f"each, on {device}; records in {out}", file=sys.stderr)
    source = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
    try:
        with _sigterm_interrupts():
            summary = evaluate_math(
                model, tokenizer, problems, out, samples=args.samples, vote=args.vote,
                temperature=args.temperature, top_p=args.top_p,
                max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat,
                progress=not args.no_progress,
                settings={"dataset": args.dataset, "source": source, "tokenizer": args.tokenizer})
    except KeyboardInterrupt as stop:  # every finished problem is on the disk already
        name = "SIGTERM" if isinstance(stop, CommandStopped) else "SIGINT"
        kept = len(read_math_records(out)[1])
        raise CommandStopped(f"{'interrupted' if name == 'SIGINT' else 'stopped by SIGTERM'}: "
                             f"{kept} problem record(s) are kept in {out}; the same command "
                             f"goes on from there", name) from None
    print("\n".join(format_math_summary(summary)))


@contextlib.contextmanager
def _sigterm_interrupts() -> Any:
    """SIGTERM raises where the command is, as Ctrl-C does (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise CommandStopped("", "SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_has_tokenizer(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Weights without tokenizer files read GPT-2's: right for GPT-2's vocabulary only."""
    folder = Path(args.source)
    folder = folder if folder.is_dir() else folder.parent
    if (args.tokenizer is None and folder.exists()
            and not any((folder / name).is_file() for name in TOKENIZER_FILES)
            and model.cfg.vocab_size != load_tokenizer_spec("gpt2").n_vocab):
        raise value_error("source", f"source {args.source!r} holds weights with a vocabulary of "
                                    f"{model.cfg.vocab_size:,} ids but no tokenizer (none of "
                                    f"{', '.join(TOKENIZER_FILES)}): put the model's "
                                    f"tokenizer.json beside the weights or give --tokenizer DIR")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default in its help, unless it is None or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _TrainFormatter(_DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the options' help; the description and epilog laid out as written."""


class _StoreGiven(argparse._StoreAction):
    """``store`` that also notes, in ``given``, that the flag was on the command line."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        namespace.given = {*getattr(namespace, "given", ()), self.dest}
        super().__call__(parser, namespace, values, option_string)


class _StoreTrueGiven(argparse._StoreTrueAction):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        namespace.given = {*getattr(namespace, "given", ()), self.dest}
        super().__call__(parser, namespace, values, option_string)


def _presets_text() -> str:
    presets = [(name, family.name, c) for family in FAMILIES.values()
               for name, c in family.presets.items()]
    width = max(len(name) for name, _, _ in presets)
    lines = [f"  {name:<{width}}  {family}: {c.n_layers} layers x {c.emb_dim} wide, {c.n_heads} "
             f"heads, context {c.context_length}" for name, family, c in presets]
    return "model presets (--preset):\n" + "\n".join(lines)


def _add_train(commands: Any) -> None:
    resumable = ", ".join("--" + f.replace("_", "-") for f in RESUME_FLAGS)
    train = commands.add_parser(
        "train", help="pretrain a model on a text corpus (no arguments: a small GPT on "
        "the bundled the-verdict.txt)",
        description="Pretrain a model on a text corpus; with no arguments, gpt-micro on the "
        "bundled the-verdict.txt. Ctrl-C saves a checkpoint at the step reached and prints "
        "the command that resumes it (a second Ctrl-C aborts at once).",
        epilog=f"{_presets_text()}\n\n"
        f"--resume RUN_DIR continues a run with the configuration it was started with; it\n"
        f"accepts only {resumable} (any other flag is refused).\n"
        "--steps N with --resume sets a new total: the cosine schedule is re-laid over N steps\n"
        "from the step reached. Resuming a finished run without --steps is an error that says\n"
        "so. A run stopped before its first checkpoint resumes from step 0.",
        formatter_class=_TrainFormatter)
    train.register("action", "store", _StoreGiven)
    train.register("action", None, _StoreGiven)
    train.register("action", "store_true", _StoreTrueGiven)
    add = train.add_argument
    add("--corpus", default=None, help="a .txt file or a directory of .txt files "
        "(default: the bundled the-verdict.txt)")
    add("--tokenizer", default=None, help="'gpt2', a directory saved by BPETokenizer.save, "
        "or a Llama 3 / Qwen3 model directory (its tokenizer.model or tokenizer.json); "
        "default: the one the preset's family declares ('gpt2' for every bundled family)")
    add("--preset", default="gpt-micro", help="model preset, any family's (listed below)")
    add("--context-length", type=int, default=None, help="tokens per window (default: the "
        "preset's)")
    add("--dropout", type=float, default=0.1, help="dropout rate")
    add("--tie-weights", action="store_true", help="share the token embedding with the head")
    add("--run-dir", default=None, help="where to write the run (default: runs/<corpus>-<time>)")
    add("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR "
        f"from its latest checkpoint, with its saved configuration (accepts only {resumable})")
    add("--epochs", type=int, default=15, help="passes over the training windows")
    add("--steps", type=int, default=None, help="optimizer steps in the whole run (overrides "
        "--epochs); with --resume, a new total over which the cosine schedule is re-laid")
    add("--batch-size", type=int, default=4, help="windows per process per micro-batch")
    add("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    add("--lr", type=float, default=6e-3, help="peak learning rate")
    add("--min-lr", type=float, default=6e-4, help="learning rate at the end of the cosine")
    add("--warmup-steps", type=int, default=10, help="linear warm-up steps")
    add("--weight-decay", type=float, default=0.1, help="AdamW decay on weight matrices")
    add("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: off)")
    add("--val-fraction", type=float, default=0.1, help="last fraction of tokens held out")
    add("--stride", type=int, default=None, help="tokens between training windows "
        "(default: the context length)")
    add("--eval-interval", type=int, default=10, help="steps between evaluations")
    add("--eval-iters", type=int, default=5, help="batches per evaluation")
    add("--checkpoint-interval", type=int, default=50, help="steps between checkpoints")
    add("--seed", type=int, default=123, help="seed for initialisation, data order, dropout")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--strategy", choices=["ddp", "fsdp"], default="ddp", help="under torchrun: replicate "
        "the model on every process (ddp) or shard weights, gradients and optimizer state "
        "across them (fsdp, FSDP2)")
    add("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    add("--prompt", default="Every effort moves you", help="prompt of the sample continuations")
    add("--sample-tokens", type=int, default=20, help="tokens per sample continuation (0: none)")
    add("--cache-dir", default=None, help="where tokenized corpora are kept "
        "(default: <run-dir parent>/.corpus-cache)")
    add("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)


def _add_generate(commands: Any) -> None:
    gen = commands.add_parser(
        "generate", help="continue a prompt from a run directory or weights of any family",
        description="Continue --prompt with the model of SOURCE, streaming tokens as they come: "
        "greedy by default, sampled with --temperature > 0 (then --top-k, --top-p, --seed). "
        "SOURCE is a run directory (its latest checkpoint), one of its checkpoints "
        "(RUN/checkpoints/step-NNNNNNNN), a Hugging Face directory or model.safetensors, or a "
        "GPT-2 size (gpt2, gpt2-medium, ...) found in the Hugging Face cache or downloaded; "
        "offline, it says which `hf download` command fetches it. The prompt is read with the "
        "tokenizer the model comes with (the run's, the files beside the weights, else "
        "GPT-2's) unless --tokenizer says otherwise; with --chat, as a user message in the chat "
        "format of instruct weights (Llama 3, Qwen3, Gemma 3), whose answer is printed alone.",
        formatter_class=_DefaultsFormatter)
    add = gen.add_argument
    add("source", help="a run directory written by 'train', a Hugging Face directory "
        "(any family: GPT-2, Llama 3, Qwen3, Gemma 3, ...) or a GPT-2 model.safetensors file")
    add("--prompt", default="Every effort moves you", help="text to continue")
    add("--max-new-tokens", type=int, default=50, help="tokens to generate")
    add("--temperature", type=float, default=0.0, help="0: greedy; higher: more random")
    add("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    add("--top-p", type=float, default=None, help="nucleus sampling: smallest set reaching p")
    add("--eos-id", type=int, default=None, help="stop at this token id")
    add("--chat", action="store_true", help="instruct weights: send --prompt as a user message "
        "in the chat format of the model's tokenizer (Llama 3, Qwen3, Gemma 3) and print the "
        "answer, which stops at the format's end-of-turn tokens")
    add("--system", default=None, help="with --chat: a system message before --prompt")
    add("--context-size", type=int, default=None,
        help="tokens the model sees (default: its whole context)")
    add("--no-cache", action="store_true", help="recompute every step without the KV cache")
    add("--seed", type=int, default=123, help="seed of the sampling generator")
    add("--tokenizer", default=None, help="override the tokenizer ('gpt2' or a directory)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    gen.set_defaults(run=_generate)


def _add_inspect(commands: Any) -> None:
    look = commands.add_parser(
        "inspect", help="draw what a model does with a prompt: tokens, attention, next-token "
        "predictions, surprisal, logit lens, stage sizes (one offline HTML page)",
        formatter_class=_DefaultsFormatter)
    add = look.add_argument
    add("source", help="a run directory written by 'train', a Hugging Face directory (any "
        "family) or a GPT-2 model.safetensors file")
    add("--prompt", default="Every effort moves you", help="the text to look at")
    add("--out", default="inspection.html", help="where to write the HTML report")
    add("--png", default=None, metavar="DIR", help="also write the main pictures as PNG files "
        "in DIR")
    add("--top-k", type=int, default=5, help="next-token candidates shown per position")
    add("--tokenizer", default=None, help="override the tokenizer ('gpt2' or a directory)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    look.set_defaults(run=_inspect)


def _serve(args: argparse.Namespace) -> None:
    if not serving_server.serve_extra_installed():
        raise CLIError(serving_server.SERVE_EXTRA_HINT)
    check_str("host", args.host)  # every flag the model does not decide, before loading it
    check_int("port", args.port, low=0, high=65535)
    check_int("max_requests", args.max_requests, low=1)
    check_int("max_n", args.max_n, low=1)
    api_key = args.api_key or os.environ.get(serving_server.API_KEY_VARIABLE) or None
    if api_key is None and not serving_server.is_loopback(args.host):
        print(f"gpt-components: warning: --host {args.host} listens beyond this machine and no "
              f"--api-key (or ${serving_server.API_KEY_VARIABLE}) is set: anyone who reaches "
              "it may use the model", file=sys.stderr, flush=True)
    model, tokenizer = _load_for_generation(args.source, args.tokenizer,
                                            _pick_device(args.device))
    name = args.model_name or Path(args.source).resolve().name or str(args.source)
    stopped = serving_server.serve_model(
        model, tokenizer, model_name=name, host=args.host, port=args.port, engine=args.engine,
        api_key=api_key, max_requests=args.max_requests, max_n=args.max_n,
        announce=lambda line: print(line, flush=True))
    print(f"gpt-components: server stopped{f' by {stopped}' if stopped else ''}",
          file=sys.stderr, flush=True)


def _chat(args: argparse.Namespace) -> None:
    check_int("max_tokens", args.max_tokens, low=1)  # before the model is loaded
    check_int("seed", args.seed, low=0, optional=True)
    generation.check_sampling(args.temperature, args.top_k, args.top_p)
    model, tokenizer = _load_for_generation(args.source, args.tokenizer,
                                            _pick_device(args.device))
    engine = engine_loop.make_engine(args.engine, model, tokenizer)
    chat_in_terminal(engine, tokenizer, context_length=model.cfg.context_length,
                     system=args.system, max_tokens=args.max_tokens,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     seed=args.seed)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, with a chat page",
        description="Serve the model of SOURCE (a run directory, one of its checkpoints or a "
        "model directory, as generate takes) on an OpenAI-compatible API: GET /v1/models, POST "
        "/v1/completions and /v1/chat/completions (streamed as server-sent events with "
        "stream: true), and a chat page at /. Chat uses the model's chat format, or chapter "
        "7's instruction format for a tokenizer without one. Ctrl-C or SIGTERM stops it. "
        "Needs the 'serve' extra (FastAPI, uvicorn).", formatter_class=_DefaultsFormatter)
    add = serve.add_argument
    add("source", help="a run directory written by 'train', a Hugging Face directory (any "
        "family) or a GPT-2 model.safetensors file")
    add("--host", default="127.0.0.1", help="address to listen on (beyond the loopback, give "
        "--api-key)")
    add("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    add("--engine", choices=engine_loop.ENGINES, default=engine_loop.DEFAULT_ENGINE,
        help="batched: many requests share each step; sequential: one request at a time "
        "through generate")
    add("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 "
        f"(default: ${serving_server.API_KEY_VARIABLE} if set)")
    add("--model-name", default=None, help="the model's id in the API (default: SOURCE's "
        "folder name)")
    add("--max-requests", type=int, default=64, help="requests held at once, waiting or "
        "running; one more is answered 429")
    add("--max-n", type=int, default=8, help="most answers one request may ask for (n)")
    add("--tokenizer", default=None, help="override the tokenizer ('gpt2' or a directory)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    serve.set_defaults(run=_serve)


def _add_chat(commands: Any) -> None:
    chat = commands.add_parser(
        "chat", help="chat with a model in the terminal, the answers streamed",
        description="Chat with the model of SOURCE in the terminal: one message a line, the "
        "answer streamed as it is written, in the model's chat format (chapter 7's instruction "
        "format for a tokenizer without one). The oldest exchanges leave the history when the "
        "conversation would pass the context. /reset starts over; /exit or Ctrl-D ends; Ctrl-C "
        "stops an answer. With stdin piped, every line is a message.",
        formatter_class=_DefaultsFormatter)
    add = chat.add_argument
    add("source", help="a run directory written by 'train', a Hugging Face directory (any "
        "family) or a GPT-2 model.safetensors file")
    add("--system", default=None, help="a system message before the conversation")
    add("--max-tokens", type=int, default=256, help="most tokens of one answer")
    add("--temperature", type=float, default=0.7, help="0: greedy; higher: more random")
    add("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    add("--top-p", type=float, default=None, help="nucleus sampling: smallest set reaching p")
    add("--seed", type=int, default=None, help="make the sampled answers repeatable")
    add("--engine", choices=engine_loop.ENGINES, default=engine_loop.DEFAULT_ENGINE,
        help="batched or sequential (the same answers; see serve)")
    add("--tokenizer", default=None, help="override the tokenizer ('gpt2' or a directory)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    chat.set_defaults(run=_chat)


def _add_evaluate_math(commands: Any) -> None:
    math = commands.add_parser(
        "evaluate-math", help="grade a model's answers to MATH-500 (the reasoning chapter)",
        description="Ask the model of SOURCE each problem of --dataset in the sequel's prompt "
        "('write the final result as \\boxed{ANSWER}'), extract its final answer and grade it "
        "against the reference with the verifier (gpt_components.reasoning.verifier). One JSON "
        "line per problem is appended to --out and flushed to the disk: run the same command "
        "again after an interruption and it skips the problems the file holds. Prints the "
        "accuracy by subject and level at the end (and pass@k with --samples K).",
        formatter_class=_DefaultsFormatter)
    add = math.add_argument
    add("source", help="a run directory written by 'train', or a model directory with weights "
        "and its tokenizer (a Hugging Face download of Qwen/Qwen3-0.6B, say)")
    add("--dataset", default="math500", help="'math500' (bundled) or a .json / .jsonl file of "
        "records with 'problem' and 'answer'")
    add("--limit", type=int, default=None, help="grade only the first N problems")
    add("--samples", type=int, default=1, help="answers sampled per problem (needs "
        "--temperature > 0 when more than 1); reports pass@k")
    add("--vote", action="store_true", help="grade the most frequent of the samples' answers "
        "(self-consistency; a tie is no answer)")
    add("--temperature", type=float, default=0.0, help="0: greedy; higher: more random")
    add("--top-p", type=float, default=None, help="nucleus sampling: smallest set reaching p")
    add("--max-new-tokens", type=int, default=512, help="tokens per answer at most")
    add("--chat", action="store_true", help="send the prompt as a user message in the chat "
        "format of the model's tokenizer (instruct and reasoning weights: Qwen3-0.6B)")
    add("--seed", type=int, default=123, help="problem i's samples use seed + i")
    add("--out", default=None, help="the JSON-lines file of records (default: "
        "<dataset>-<source name>.jsonl); an existing one is resumed")
    add("--tokenizer", default=None, help="override the tokenizer ('gpt2' or a directory)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    add("--no-progress", action="store_true", help="no progress bar")
    math.set_defaults(run=_evaluate_math)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-components",
        description="Train, run and finetune a GPT-2-style model built from first principles.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser(
        "info", help="show package, torch and tiktoken versions and devices",
        description="Print the versions of gpt_components, torch and tiktoken and the devices "
        "torch can use here (cpu, cuda, mps), the first of which --device auto picks.")
    info.set_defaults(run=_info)
    _add_train(commands)
    _add_generate(commands)
    add_finetune_commands(commands)
    add_grpo_command(commands)
    _add_inspect(commands)
    _add_serve(commands)
    _add_chat(commands)
    _add_evaluate_math(commands)
    for command in commands.choices.values():
        command.set_defaults(flags=_flags_of(command))
    return parser


def _flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each destination of a command's arguments and how the user writes it: its longest
    option string (``--run`` for ``run_dir``), or a positional's name as its usage shows it
    (``source``)."""
    flags = {}
    for action in parser._actions:  # argparse lists them nowhere else
        if action.option_strings:
            flags[action.dest] = max(action.option_strings, key=len)
        elif action.dest != argparse.SUPPRESS:
            flags[action.dest] = action.metavar or action.dest
    return flags


# How the command line names the library's parameters (``error.parameter``): a parameter is
# its own flag (``top_p`` is ``--top-p``) unless this table says which destinations may hold it,
# in order; among those a command has, the one the user gave wins (``source`` is ``--run`` when
# --run was given, ``--weights`` otherwise).
PARAMETER_FLAGS: dict[str, tuple[str, ...]] = {
    "max_steps": ("steps",),
    "name": ("preset",),
    "drop_rate": ("drop_rate", "dropout"),
    "peak_lr": ("lr",),
    "rank": ("lora_rank",),
    "alpha": ("lora_alpha",),
    "text": ("prompt",),
    "source": ("source", "run_dir", "weights", "model"),
    "run": ("run_dir",),
    "run_dir": ("resume", "run_dir"),
    "data_path": ("data",),
    "path": ("data",),
    "problems": ("dataset",),
}


def flag_of(parameter: str, args: argparse.Namespace) -> str | None:
    """The flag of the running command that holds the library's ``parameter``, or None."""
    flags = getattr(args, "flags", {})
    candidates = [d for d in PARAMETER_FLAGS.get(parameter, (parameter,)) if d in flags]
    given = [d for d in candidates if getattr(args, d, None) not in (None, False)]
    chosen = (given or candidates or [None])[0]
    return flags[chosen] if chosen else None


def _error_line(error: ArgumentError, args: argparse.Namespace) -> str:
    """One line naming the flag: ``--top-p must be ...`` for ``top_p must be ...``."""
    parameter = error.parameter
    flag = flag_of(parameter, args)
    resumed = getattr(args, "resume", None)
    if resumed and flag != "--resume" and parameter not in getattr(args, "given", ()):
        return f"--resume {resumed}: the run's {error}"  # the saved configuration's value
    line = str(error) if flag is None else str(renamed(error, parameter, flag))
    if flag is not None and flag.startswith("--"):
        # A flag given has a value: the library's "or None" (leave the argument out) is the
        # flag left out, which needs no saying.
        line = line.replace(" or None, got ", ", got ", 1)
    if flag == "--preset":  # the list of presets is long: the help lays it out
        line += f" (see gpt-components {args.command} --help)"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success; 2 on an error, printed as one line ``gpt-components: error: ...`` (no
    command: the help); 130 after Ctrl-C and 143 after SIGTERM, printed as one line saying what
    was kept.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            args.run(args)
        except ArgumentError as error:
            print(f"gpt-components: error: {_error_line(error, args)}", file=sys.stderr)
            return 2
        except (CLIError, ValueError, RunLockedError, TrainingDivergedError,
                CheckpointWriteError) as error:
            print(f"gpt-components: error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # a missing file, a full disk, a directory we may not write
            where = f": {str(error.filename)!r}" if error.filename else ""
            print(f"gpt-components: error: {error.strerror or error}{where}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as interrupt:
            stopped = isinstance(interrupt, CommandStopped)
            message = str(interrupt) if stopped else "interrupted"
            if message:
                print(f"gpt-components: {message}", file=sys.stderr)
            return interrupt.status if stopped else 130
    return 0


def _one_line_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """A library warning (weights converted to another precision, ...) as one line, no source."""
    print(f"gpt-components: warning: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
