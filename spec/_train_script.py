"""Train a tiny GPT in a subprocess for the spec: resumed after SIGKILL, or under torchrun (gloo).

Usage: python spec/_train_script.py RUN_DIR [--steps N] [--batch-size B] [--kill-at K] [--resume]
[--strategy ddp|fsdp] [--resume-copy DIR]
(under ``torchrun --nproc_per_node=2`` each rank reads its shard; only rank 0 writes).
``--resume-copy DIR`` then copies the finished run to DIR as it stood at the checkpoint before
the last, and resumes it there to the end (a resume without a second launch).
"""

import argparse
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gpt_components.model import GPTConfig, GPTModel
from gpt_components.training import TrainConfig, train


def run(run_dir: str, *, steps: int = 8, batch_size: int = 2, drop_rate: float = 0.1,
        kill_at: int = 0, resume: bool = False, strategy: str = "ddp") -> None:
    """Train the spec's tiny GPT on a fixed random corpus (in this process or a torchrun rank)."""
    tokens = np.random.default_rng(0).integers(0, 64, 2000).astype(np.uint16)
    cfg = GPTConfig.from_name("gpt-nano", vocab_size=64, context_length=16, drop_rate=drop_rate)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = GPTModel(cfg)
    train_cfg = TrainConfig(batch_size=batch_size, max_steps=steps, lr=3e-3, min_lr=3e-4,
                            warmup_steps=2, eval_interval=3, eval_iters=2, checkpoint_interval=2,
                            seed=11, strategy=strategy)

    def kill(record: dict) -> None:
        if record["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(model, tokens[:1800], tokens[1800:], train_cfg, run_dir, context_length=16,
          resume=resume, progress=False, on_step=kill, plot=False)
    latest = json.loads((Path(run_dir) / "checkpoints" / "latest.json").read_text())
    if latest["step"] != steps:  # every rank returns only after rank 0's last checkpoint
        raise SystemExit(f"train returned with the last checkpoint at step {latest['step']}")


def rewind_copy(run_dir: str, copy: str) -> None:
    """Copy a finished run to ``copy`` as it stood at its checkpoint before the last."""
    shutil.copytree(run_dir, copy)
    checkpoints = Path(copy) / "checkpoints"
    *_, before, last = sorted(checkpoints.glob("step-*"))
    shutil.rmtree(last)
    step = int(before.name.split("-")[1])
    (checkpoints / "latest.json").write_text(json.dumps({"step": step, "path": before.name}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--drop-rate", type=float, default=0.1)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--resume-copy", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    run(args.run_dir, steps=args.steps, batch_size=args.batch_size, drop_rate=args.drop_rate,
        kill_at=args.kill_at, resume=args.resume, strategy=args.strategy)
    if args.resume_copy:
        if not dist.is_initialized() or dist.get_rank() == 0:
            rewind_copy(args.run_dir, args.resume_copy)
        if dist.is_initialized():
            dist.barrier()
        run(args.resume_copy, steps=args.steps, batch_size=args.batch_size,
            drop_rate=args.drop_rate, resume=True, strategy=args.strategy)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
