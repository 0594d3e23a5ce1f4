"""``gpt-components finetune-grpo``: GRPO with verifiable rewards as a resumable run.

``add_grpo_command(subparsers)`` registers the command. A run directory (``--out``) is laid
out as ``gpt-components train``'s, through the same owners (``machinery.rundir``,
``checkpoint``, ``metrics``): ``config.json`` (the model's config; under ``train`` every GRPO
setting), ``tokenizer/`` unless GPT-2's, ``reference/`` (the starting model: the frozen
reference of the KL term, and the base that LoRA adapters sit on), ``checkpoints/``
(weights, with the adapters under LoRA, and the optimizer state), ``metrics.jsonl`` (a record
per step: ``reward``, ``response_length``, ``kl``, ``clip_fraction``, ``loss``; and
``eval_accuracy`` on held-out problems at step 0, every ``--eval-interval`` steps and at the
end) and ``grpo.png``. So ``generate RUN`` and ``finetune-grpo --run RUN`` read a full run
like any other; a LoRA run also writes the merged model to ``RUN/merged/`` at the end.

Every step's problems and samples are drawn from generators seeded by ``(--seed, step)``, so
``--resume RUN`` after SIGKILL, Ctrl-C or SIGTERM (exit 130/143, after saving the step) goes on
exactly as the run would have gone uninterrupted. The problems are the package's own
arithmetic task (``reasoning.tasks``: train and held-out split) or a JSON list of
``problem``/``answer`` records (``--data``, prompts rendered with the verifier's
``render_prompt``; its last ``--eval-problems`` records are held out).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="gpt-components")
>>> add_grpo_command(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["finetune-grpo", "--out", "runs/grpo", "--group-size", "8"])
>>> args.group_size, args.clip_eps, args.kl_coef, args.reward
(8, 0.2, 0.0, 'exact')
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..finetune.commands import CommandStopped, load_start_model
from ..finetune.lora import merge_lora, replace_linear_with_lora
from ..fundamentals import default_device
from ..machinery import rundir
from ..machinery.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ..machinery.checks import check_choice, check_float, check_int, value_error
from ..machinery.distributed import load_optimizer_state
from ..machinery.metrics import append_metrics, read_metrics, start_metrics
from ..machinery.pretrained import from_pretrained, save_pretrained
from ..machinery.sources import SourceNotFoundError, load_tokenizer_spec, save_tokenizer
from ..training import configure_optimizer, stop_on_signals
from .grpo import grpo_step, reward_rlvr
from .tasks import (
    arithmetic_problems,
    reward_boxed_format,
    reward_exact,
    task_accuracy,
    task_prompt,
)

__all__ = ["add_grpo_command", "plot_grpo"]

REFERENCE_DIR = "reference"
# Settings a resume takes from the command line; every other one is the run's own.
RESUMABLE = ("steps", "device", "no_progress")


def add_grpo_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``finetune-grpo`` on a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "finetune-grpo", help="reinforcement learning with verifiable rewards (GRPO)",
        description="GRPO on problems with checkable answers: sample --group-size answers to "
        "each of --prompts-per-step problems, reward the correct ones, and push each answer "
        "up or down by how it compares with its group. Writes a run directory (--out) with "
        "checkpoints, metrics.jsonl and grpo.png (reward, response length, KL, held-out "
        "accuracy); --resume RUN continues it exactly.")
    run = p.add_argument_group("the run (exactly one of --out and --resume)")
    run.add_argument("--out", default=None, help="a new run directory to write")
    run.add_argument("--resume", default=None, metavar="RUN",
                     help="continue the run in RUN from its latest checkpoint, with its saved "
                     "settings (--steps sets a new total; --device and --no-progress apply; "
                     "every other setting is the run's own)")
    start = p.add_argument_group("starting model (at most one of --weights and --run)")
    start.add_argument("--weights", help="weights in Hugging Face's layout (any family), with "
                       "the tokenizer files beside them")
    start.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                       help="a run directory of `gpt-components train` (or of finetune-grpo) "
                       "with its tokenizer")
    start.add_argument("--preset", default="gpt-nano",
                       help="model shape from random weights with GPT-2's tokenizer, when "
                       "neither is given (default gpt-nano: a smoke test, not a recipe)")
    start.add_argument("--lora-rank", type=int, default=None,
                       help="train rank-R adapters on every linear layer, base weights frozen")
    start.add_argument("--lora-alpha", type=float, default=16.0,
                       help="scale of the adapters' output (default 16)")
    task = p.add_argument_group("problems")
    task.add_argument("--task", default="arithmetic", choices=["arithmetic"],
                      help="the package's own task (default arithmetic: addition with carries "
                      "written out); ignored with --data")
    task.add_argument("--data", default=None, help="a JSON list of records with 'problem' and "
                      "'answer' (MATH-style), instead of --task")
    task.add_argument("--min-digits", type=int, default=1, help="arithmetic: fewest digits of "
                      "an operand (default 1)")
    task.add_argument("--max-digits", type=int, default=3, help="arithmetic: most digits of an "
                      "operand (default 3)")
    task.add_argument("--eval-problems", type=int, default=100,
                      help="held-out problems answered greedily at step 0, every "
                      "--eval-interval steps and at the end (default 100; 0: none)")
    grpo = p.add_argument_group("GRPO")
    grpo.add_argument("--steps", type=int, default=None, help="optimizer steps of the run "
                      "(default 100); with --resume, a new total (default: the run's own)")
    grpo.add_argument("--prompts-per-step", type=int, default=4,
                      help="problems (groups) per step (default 4)")
    grpo.add_argument("--group-size", type=int, default=8,
                      help="answers sampled per problem, at least 2 (default 8)")
    grpo.add_argument("--reward", default="exact", choices=["exact", "rlvr"],
                      help="exact: the first \\boxed{} must be the answer verbatim (instant); "
                      "rlvr: the verifier's grade_answer of the last \\boxed{} (default exact)")
    grpo.add_argument("--format-reward", type=float, default=0.0,
                      help="added to the reward of an answer that boxes a number at all, "
                      "right or wrong: a shaping bonus for a model that is rarely right "
                      "(default 0; held-out accuracy never counts it)")
    grpo.add_argument("--max-new-tokens", type=int, default=64,
                      help="most tokens per sampled answer (default 64)")
    grpo.add_argument("--temperature", type=float, default=1.0,
                      help="sampling temperature of the rollouts (default 1.0)")
    grpo.add_argument("--top-p", type=float, default=None, help="nucleus sampling of the "
                      "rollouts (default: off)")
    grpo.add_argument("--clip-eps", type=float, default=0.2,
                      help="PPO clip of the probability ratio (default 0.2)")
    grpo.add_argument("--kl-coef", type=float, default=0.0,
                      help="weight of the k3 KL penalty to the reference (default 0)")
    grpo.add_argument("--updates", type=int, default=1,
                      help="optimizer steps per batch of samples (default 1: ratio 1, no "
                      "clipping)")
    grpo.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate "
                      "(default 1e-5, the sequel's)")
    grpo.add_argument("--weight-decay", type=float, default=0.0,
                      help="AdamW weight decay on weight matrices (default 0)")
    grpo.add_argument("--grad-clip", type=float, default=1.0,
                      help="max global gradient norm (default 1.0)")
    grpo.add_argument("--eval-interval", type=int, default=10,
                      help="steps between held-out evaluations (default 10)")
    grpo.add_argument("--checkpoint-interval", type=int, default=10,
                      help="steps between checkpoints (default 10)")
    grpo.add_argument("--seed", type=int, default=123, help="seed of the problems, the "
                      "samples and LoRA's initial adapters (default 123)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=finetune_grpo)


def _mix(*parts: int) -> int:
    """One seed from several numbers (a fixed function: a resume draws what a run would)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**31 - 1)
    return value


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags a run keeps in config.json, checked before any work."""
    args.steps = 100 if args.steps is None else check_int("steps", args.steps, low=1)
    check_int("prompts_per_step", args.prompts_per_step, low=1)
    check_int("group_size", args.group_size, low=2)
    check_int("max_new_tokens", args.max_new_tokens, low=1)
    check_float("temperature", args.temperature, low=0, low_open=True)
    check_float("top_p", args.top_p, low=0, high=1, low_open=True, optional=True)
    check_float("clip_eps", args.clip_eps, low=0)
    check_float("kl_coef", args.kl_coef, low=0)
    check_int("updates", args.updates, low=1)
    check_float("lr", args.lr, low=0, low_open=True)
    check_float("weight_decay", args.weight_decay, low=0)
    check_float("grad_clip", args.grad_clip, low=0, low_open=True)
    check_int("eval_interval", args.eval_interval, low=1)
    check_int("eval_problems", args.eval_problems, low=0)
    check_int("checkpoint_interval", args.checkpoint_interval, low=1)
    check_int("seed", args.seed, low=0)
    check_int("lora_rank", args.lora_rank, low=1, optional=True)
    check_float("lora_alpha", args.lora_alpha)
    check_int("min_digits", args.min_digits, low=1, high=9)
    check_int("max_digits", args.max_digits, low=args.min_digits, high=9)
    check_choice("reward", args.reward, ("exact", "rlvr"))
    check_float("format_reward", args.format_reward, low=0)
    names = ("steps", "prompts_per_step", "group_size", "max_new_tokens", "temperature",
             "top_p", "clip_eps", "kl_coef", "updates", "lr", "weight_decay", "grad_clip",
             "eval_interval", "eval_problems", "checkpoint_interval", "seed", "lora_rank",
             "lora_alpha", "task", "min_digits", "max_digits", "reward", "format_reward")
    settings = {name: getattr(args, name) for name in names}
    settings["data"] = None if args.data is None else str(Path(args.data).resolve())
    return settings


def _device(name: str) -> torch.device:
    if name == "auto":
        return default_device()
    try:
        return torch.device(name)
    except RuntimeError:
        raise value_error("device", f"device must be cpu, cuda, mps or auto, got {name!r}"
                          ) from None


class _Problems:
    """Each step's training problems and the held-out ones, fixed by the settings."""

    def __init__(self, s: dict[str, Any]):
        self.s = s
        self.records: list[dict[str, str]] | None = None
        if s["data"] is not None:
            self.records = _read_records(s["data"])
            held = s["eval_problems"]
            if len(self.records) - held < 1:
                raise value_error("data", f"data holds {len(self.records)} records: too few "
                                          f"to hold out --eval-problems {held} and train on "
                                          "the rest")
            self.train, self.test = self.records[:-held or None], self.records[len(
                self.records) - held:]
        else:
            self.test = arithmetic_problems(s["eval_problems"], split="test", seed=s["seed"],
                                            min_digits=s["min_digits"],
                                            max_digits=s["max_digits"])

    def at(self, step: int) -> list[dict[str, str]]:
        n, seed = self.s["prompts_per_step"], _mix(self.s["seed"], step)
        if self.records is None:
            return arithmetic_problems(n, split="train", seed=seed,
                                       min_digits=self.s["min_digits"],
                                       max_digits=self.s["max_digits"])
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        return [self.train[i] for i in order[:n].tolist()]

    def prompt(self, problem: str) -> str:
        if self.records is None:
            return task_prompt(problem)
        from .verifier import render_prompt

        return render_prompt(problem)


def _read_records(path: str) -> list[dict[str, str]]:
    if not Path(path).is_file():
        raise SourceNotFoundError("data", f"data {path!r} is not a file")
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise value_error("data", f"data {path!r} is not JSON: {error}") from None
    if not isinstance(records, list) or not records or not all(
            isinstance(r, dict) and isinstance(r.get("problem"), str)
            and isinstance(r.get("answer"), str) for r in records):
        raise value_error("data", f"data {path!r} must be a JSON list of records with string "
                                  "'problem' and 'answer'")
    return records


def _apply_lora(model: nn.Module, s: dict[str, Any]) -> None:
    if s["lora_rank"] is not None:
        replace_linear_with_lora(model, s["lora_rank"], s["lora_alpha"],
                                 generator=torch.Generator().manual_seed(s["seed"]))
    else:
        model.requires_grad_(True)


def _new_run(args: argparse.Namespace, s: dict[str, Any]) -> Path:
    """Write the run's reference model, tokenizer and config.json (last: it makes a run)."""
    out = Path(args.out)
    if rundir.holds_run(out):
        raise value_error("out", f"out {str(out)!r} already holds a run: resume it with "
                                 f"--resume {out}, or choose another directory")
    if out.exists() and not out.is_dir():
        raise value_error("out", f"out {str(out)!r} is a file: give a new directory")
    model, tokenizer, origin = load_start_model(args.weights, args.run_dir, args.preset, 0.0,
                                                s["seed"])
    print(origin, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with rundir.hold(out):
        save_pretrained(model, out / REFERENCE_DIR)
        kept = "gpt2"
        if getattr(tokenizer, "name", None) != "gpt2":
            save_tokenizer(tokenizer, out / rundir.TOKENIZER_DIR)
            kept = rundir.TOKENIZER_DIR
        rundir.write_config(out, model.cfg, {**s, "started": origin}, corpus=s["data"] or
                            f"task:{s['task']}", tokenizer=kept, corpus_tokens=None)
    return out


def finetune_grpo(args: argparse.Namespace) -> None:
    """Handler of ``finetune-grpo``."""
    if (args.out is None) == (args.resume is None):
        raise value_error("out", "out must name a new run directory, or --resume an earlier "
                                 "run: exactly one of them")
    device = _device(args.device)
    if args.resume is not None:
        run_dir = Path(args.resume)
        saved = rundir.read_config(run_dir)
        s = dict(saved.train)
        if args.steps is not None:
            s["steps"] = check_int("steps", args.steps, low=1)
    else:
        s = _settings(args)
    problems = _Problems(s)  # a bad --data is refused before the model is read
    if args.resume is None:
        run_dir = _new_run(args, s)
    with rundir.hold(run_dir):
        _train(run_dir, s, problems, device, progress=not args.no_progress)


def _train(run_dir: Path, s: dict[str, Any], problems: _Problems, device: torch.device,
           progress: bool) -> None:
    saved = rundir.read_config(run_dir)
    tokenizer = load_tokenizer_spec(rundir.tokenizer_spec(run_dir, saved.tokenizer))
    reference = from_pretrained(run_dir / REFERENCE_DIR).requires_grad_(False).eval()
    policy = copy.deepcopy(reference)
    _apply_lora(policy, s)
    step, checkpoint = 0, None
    if latest_checkpoint(run_dir) is not None:
        checkpoint = load_checkpoint(run_dir, map_location=str(device))
        checkpoint.load_into(policy)
        step = checkpoint.meta["step"]
    if step >= s["steps"]:
        raise value_error("steps", f"steps {s['steps']}: the run {str(run_dir)!r} has already "
                                   f"reached step {step}; give a larger --steps to go on")
    policy.to(device)
    reference.to(device)
    optimizer = configure_optimizer(policy, s["lr"], s["weight_decay"])
    if checkpoint is not None:
        load_optimizer_state(policy, optimizer, checkpoint.state["optimizer"])
    start_metrics(run_dir, keep_until_step=step or None)  # from step 0: afresh, step 0 too
    correct = reward_exact if s["reward"] == "exact" else reward_rlvr

    def reward_fn(text: str, answer: str) -> float:
        bonus = s["format_reward"] * reward_boxed_format(text) if s["format_reward"] else 0.0
        return correct(text, answer) + bonus

    def evaluate(at: int) -> None:
        if s["eval_problems"] > 0:
            accuracy = task_accuracy(policy, tokenizer, problems.test, prompt_fn=problems.prompt,
                                     reward_fn=correct, max_new_tokens=s["max_new_tokens"])
            append_metrics(run_dir, [{"step": at, "eval_accuracy": accuracy}])
            say(f"step {at}: held-out accuracy {accuracy:.1%} ({len(problems.test)} problems)")

    def save(at: int) -> None:
        save_checkpoint(run_dir, model=policy, state={"optimizer": optimizer.state_dict()},
                        meta={"step": at, "seed": s["seed"]})

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s["steps"], initial=step, desc="grpo", unit="step", dynamic_ncols=True)
    say: Callable[[str], None] = bar.write if bar is not None else print  # type: ignore
    with stop_on_signals() as stopping:
        if step == 0:  # a Ctrl-C during it stops after the first step, with a checkpoint
            evaluate(0)
        while step < s["steps"]:
            record = grpo_step(
                policy, reference, optimizer, tokenizer, problems.at(step),
                prompt_fn=problems.prompt, reward_fn=reward_fn, group_size=s["group_size"],
                max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                top_p=s["top_p"], clip_eps=s["clip_eps"], kl_coef=s["kl_coef"],
                updates=s["updates"], grad_clip=s["grad_clip"], seed=_mix(s["seed"], step, 1),
                step=step)
            step += 1
            append_metrics(run_dir, [{"step": step, **record}])
            if bar is not None:
                bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.4f}",
                                length=f"{record['response_length']:.1f}")
                bar.update(1)
            if step % s["eval_interval"] == 0 or step == s["steps"]:
                evaluate(step)
            if step % s["checkpoint_interval"] == 0 or step == s["steps"]:
                save(step)
            if stopping() is not None and step < s["steps"]:
                if step % s["checkpoint_interval"] != 0:
                    save(step)
                if bar is not None:
                    bar.close()
                plot_grpo(read_metrics(run_dir), run_dir / "grpo.png")
                what = "interrupted" if stopping() == "SIGINT" else f"stopped by {stopping()}"
                raise CommandStopped(f"{what} after step {step}: checkpoint saved; resume with: "
                                     f"gpt-components finetune-grpo --resume {run_dir}",
                                     stopping())
    if bar is not None:
        bar.close()
    records = read_metrics(run_dir)
    plot_grpo(records, run_dir / "grpo.png")
    if s["lora_rank"] is not None:
        merged = run_dir / "merged"
        save_pretrained(merge_lora(policy.cpu()), merged)
        save_tokenizer(tokenizer, merged)
        print(f"merged model written to {merged}/", flush=True)
    accuracies = [r["eval_accuracy"] for r in records if "eval_accuracy" in r]
    if accuracies:
        print(f"held-out accuracy: {accuracies[0]:.1%} at the start, {accuracies[-1]:.1%} now",
              flush=True)
    print(f"run written to {run_dir}/ (checkpoints, metrics.jsonl, grpo.png)", flush=True)


def plot_grpo(records: list[dict], path: str | os.PathLike) -> Any:
    """Draw reward, response length, KL and held-out accuracy against steps into ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    panels = (("reward", "mean reward"), ("response_length", "response length (tokens)"),
              ("kl", "KL to the reference (k3)"), ("eval_accuracy", "held-out accuracy"))
    for ax, (key, label) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, "o-" if key == "eval_accuracy" else "-")
        ax.set(xlabel="step", ylabel=label)
    fig.tight_layout()
    fig.savefig(path)
    return fig
