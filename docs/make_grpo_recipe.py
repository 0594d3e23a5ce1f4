"""Watch RL work on a CPU: the recipe of docs/reasoning-grpo.md, end to end and resumable.

    python docs/make_grpo_recipe.py                   # everything, in runs/grpo-recipe/
    python docs/make_grpo_recipe.py --grpo-minutes 2  # a shorter GRPO stage (a smoke run)

Stages, each skipped when its result is already there (so a killed recipe is rerun as it is):

1. the task's worked examples (``reasoning.tasks.write_worked_examples``), each padded with
   end-of-text tokens to the context length so that every training window is one example
   from its start, and a byte-level tokenizer (``BPETokenizer`` with no merges: every digit
   its own token);
2. ``gpt-components train`` on them, ``--chunk`` steps at a time (``train --resume --steps``),
   until the model answers ``--sft-target`` (25%) of 100 held-out problems: a start that
   still slips, so that a group of answers holds right and wrong ones;
3. its greedy accuracy on 500 held-out problems (``task_accuracy``);
4. ``gpt-components finetune-grpo`` from that run for ``--grpo-minutes`` of wall time: after
   that the recipe stops it with SIGTERM (as Ctrl-C would), which saves the step reached; a rerun
   resumes it with the time that is left (``state.json`` keeps the time spent);
5. the accuracy of the GRPO model on the same 500 problems, the gain, and the curve, copied
   to ``docs/reasoning-grpo-curve.png`` (``--no-picture`` to leave docs/ alone).

It prints the figures; the guide quotes them with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "gpt_components.cli", *argv]


def _accuracy(source: Path, args: argparse.Namespace, problems: int | None = None,
              seed: int | None = None) -> float:
    from gpt_components.machinery.sources import load_model_and_tokenizer
    from gpt_components.reasoning.tasks import arithmetic_problems, task_accuracy

    model, tokenizer, _ = load_model_and_tokenizer(source)
    held_out = arithmetic_problems(problems or args.held_out, split="test",
                                   seed=args.seed if seed is None else seed,
                                   max_digits=args.max_digits)
    return task_accuracy(model, tokenizer, held_out, max_new_tokens=args.max_new_tokens)


def _pretrain(work: Path, args: argparse.Namespace) -> Path:
    """Train on worked examples, ``--chunk`` steps at a time, until the model answers
    ``--sft-target`` of 100 problems (held out, but not the 500 measured later) or has made
    ``--pretrain-steps``: a start that still slips, so that GRPO's groups differ."""
    from gpt_components.bpe import BPETokenizer
    from gpt_components.machinery.checkpoint import latest_step
    from gpt_components.reasoning.tasks import write_worked_examples

    corpus, tokenizer, run = work / "corpus.txt", work / "bytes", work / "sft"
    if not corpus.exists():
        write_worked_examples(corpus, args.examples, seed=args.seed, max_digits=args.max_digits,
                              width=args.context_length)  # one example a training window
    if not tokenizer.exists():
        BPETokenizer.train("0123456789", vocab_size=257).save(tokenizer)  # bytes, no merges
    if not (run / "config.json").exists():
        subprocess.run(_cli("train", "--corpus", str(corpus), "--tokenizer", str(tokenizer),
                            "--preset", args.preset, "--steps", str(args.chunk),
                            "--context-length", str(args.context_length),
                            "--batch-size", str(args.batch_size), "--lr", str(args.pretrain_lr),
                            "--min-lr", str(args.pretrain_lr / 10), "--dropout", "0",
                            "--eval-interval", "100", "--checkpoint-interval", "100",
                            "--sample-tokens", "0", "--run-dir", str(run), "--no-progress"),
                       check=True)
    while True:
        reached = latest_step(run)
        accuracy = _accuracy(run, args, problems=100, seed=args.seed + 1)
        print(f"supervised step {reached}: {accuracy:.0%} of 100 problems", flush=True)
        if accuracy >= args.sft_target or reached >= args.pretrain_steps:
            return run
        subprocess.run(_cli("train", "--resume", str(run), "--steps",
                            str(min(reached + args.chunk, args.pretrain_steps)),
                            "--no-progress"), check=True)


def _grpo(work: Path, sft: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Run (or resume) finetune-grpo until it finishes or the time budget is spent."""
    run, state_file = work / "grpo", work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"seconds": 0.0}
    left = args.grpo_minutes * 60 - state["seconds"]
    if state.get("done") or left <= 0:
        return run, state["seconds"]
    if (run / "config.json").exists():
        argv = _cli("finetune-grpo", "--resume", str(run), "--no-progress")
    else:
        argv = _cli("finetune-grpo", "--run", str(sft), "--out", str(run),
                    "--max-digits", str(args.max_digits), "--steps", str(args.grpo_steps),
                    "--prompts-per-step", str(args.prompts_per_step),
                    "--group-size", str(args.group_size), "--lr", str(args.grpo_lr),
                    "--max-new-tokens", str(args.max_new_tokens), "--temperature", "1.0",
                    "--eval-problems", str(min(200, args.held_out)), "--eval-interval", "50",
                    "--checkpoint-interval", "25", "--seed", str(args.seed), "--no-progress")
    started = time.monotonic()
    child = subprocess.Popen(argv)
    try:
        child.wait(timeout=left)
        state["done"] = child.returncode == 0
    except subprocess.TimeoutExpired:
        # SIGTERM, which the command handles as Ctrl-C (it saves the step reached, exit 143):
        # SIGINT would be ignored by a child of a recipe started in the background (nohup, &).
        child.send_signal(signal.SIGTERM)
        child.wait()
    state["seconds"] += time.monotonic() - started
    state_file.write_text(json.dumps(state))
    if child.returncode not in (0, 130, 143):
        raise SystemExit(f"finetune-grpo failed with exit status {child.returncode}")
    return run, state["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/grpo-recipe", help="where the runs go")
    p.add_argument("--examples", type=int, default=20_000, help="worked training examples")
    p.add_argument("--max-digits", type=int, default=3, help="most digits of an operand")
    p.add_argument("--preset", default="gpt-micro", help="model preset of the supervised run")
    p.add_argument("--context-length", type=int, default=64,
                   help="tokens per training window, and per padded example")
    p.add_argument("--pretrain-steps", type=int, default=3000, help="supervised steps at most")
    p.add_argument("--chunk", type=int, default=200, help="supervised steps between checks")
    p.add_argument("--sft-target", type=float, default=0.25,
                   help="stop the supervised run once it answers this share of 100 problems")
    p.add_argument("--batch-size", type=int, default=16, help="supervised windows per step")
    p.add_argument("--pretrain-lr", type=float, default=3e-3, help="supervised peak lr")
    p.add_argument("--grpo-minutes", type=float, default=15.0, help="GRPO wall-time budget")
    p.add_argument("--grpo-steps", type=int, default=2000, help="GRPO steps at most")
    p.add_argument("--prompts-per-step", type=int, default=8, help="GRPO problems per step")
    p.add_argument("--group-size", type=int, default=8, help="GRPO answers per problem")
    p.add_argument("--grpo-lr", type=float, default=1e-4, help="GRPO learning rate")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per answer")
    p.add_argument("--held-out", type=int, default=500, help="held-out problems measured")
    p.add_argument("--seed", type=int, default=123, help="seed of the data and the runs")
    p.add_argument("--no-picture", action="store_true", help="leave docs/ as it is")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sft = _pretrain(work, args)
    before = _accuracy(sft, args)
    print(f"supervised start: {before:.1%} of {args.held_out} held-out problems", flush=True)
    run, seconds = _grpo(work, sft, args)
    after = _accuracy(run, args)
    print(f"after {seconds / 60:.1f} minutes of GRPO: {after:.1%} of the same {args.held_out} "
          "problems "
          f"({100 * (after - before):+.1f} points)")
    if not args.no_picture and (run / "grpo.png").exists():
        shutil.copyfile(run / "grpo.png", DOCS / "reasoning-grpo-curve.png")
        print(f"curve copied to {DOCS / 'reasoning-grpo-curve.png'}")


if __name__ == "__main__":
    main()
