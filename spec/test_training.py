"""Properties of pretraining: losses, schedule, optimizer groups, clipping, accumulation,
reproducibility, exact resume after SIGKILL, divergence, and torchrun with gloo."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from gpt_components import training as training_module
from gpt_components.machinery.checkpoint import latest_checkpoint, load_checkpoint
from gpt_components.machinery.metrics import read_metrics
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.training import (
    TrainConfig,
    TrainingDivergedError,
    calc_loss_batch,
    calc_loss_loader,
    check_grad_clip,
    configure_optimizer,
    evaluate,
    lr_at,
    perplexity,
    train,
    train_step,
)
from spec._train_script import run as run_in_process
from spec.helpers import TinyLM
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch05
SCRIPT = Path(__file__).resolve().parent / "_train_script.py"
ROOT = SCRIPT.parent.parent


def _tiny(seed: int, dtype: torch.dtype = torch.float32, drop_rate: float = 0.0) -> TinyLM:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyLM(vocab_size=32, emb_dim=8, drop_rate=drop_rate).to(dtype)


def _batch(seed: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 32, (batch, length + 1), generator=generator(seed))
    return ids[:, :-1], ids[:, 1:]


@given(peak=st.floats(1e-5, 1.0), ratio=st.floats(0.0, 1.0), warmup=st.integers(0, 20),
       total=st.integers(1, 200))
def test_the_schedule_warms_up_to_the_peak_then_decays_to_the_minimum_never_below(
        peak, ratio, warmup, total):
    low = peak * ratio
    rates = [lr_at(s, peak_lr=peak, min_lr=low, warmup_steps=warmup, total_steps=total)
             for s in range(total)]
    tol = 1e-12 * peak
    assert all(low - tol <= r <= peak + tol for r in rates)
    warm, decay = rates[:warmup], rates[warmup:]
    assert all(a <= b + tol for a, b in zip(warm, warm[1:], strict=False))
    assert all(a >= b - tol for a, b in zip(decay, decay[1:], strict=False))
    if warmup and warmup <= total:
        assert math.isclose(rates[warmup - 1], peak, rel_tol=1e-12)
    if total > warmup:
        assert math.isclose(decay[0], peak, rel_tol=1e-12) or total - 1 == warmup
        assert math.isclose(rates[-1], low, rel_tol=1e-9, abs_tol=tol)


@given(seed=seeds, batch=st.integers(1, 4), length=st.integers(1, 6))
def test_batch_loss_is_the_float64_cross_entropy_of_the_logits(seed, batch, length):
    model = _tiny(seed)
    x, y = _batch(seed, batch, length)
    logits = model(x).double()  # (B, T, V)
    reference = (torch.logsumexp(logits, -1) - logits.gather(-1, y[..., None])[..., 0]).mean()
    loss = calc_loss_batch(x, y, model, "cpu")
    assert math.isclose(loss.item(), reference.item(), rel_tol=1e-5)
    assert math.isclose(perplexity(loss), math.exp(reference.item()), rel_tol=1e-5)


@given(seed=seeds, n=st.integers(0, 5), num=st.one_of(st.none(), st.integers(1, 7)))
def test_loader_loss_averages_the_first_num_batches(seed, n, num):
    model = _tiny(seed)
    batches = [_batch(seed + i, 2, 3) for i in range(n)]
    got = calc_loss_loader(batches, model, "cpu", num_batches=num)
    used = batches[: n if num is None else min(num, n)]
    if not used:
        assert math.isnan(got)
        return
    expected = sum(calc_loss_batch(x, y, model, "cpu").item() for x, y in used) / len(used)
    assert math.isclose(got, expected, rel_tol=1e-6)
    model.train()
    assert evaluate(model, batches, batches, "cpu", num or 1)[0] == calc_loss_loader(
        batches, model, "cpu", num or 1)
    assert model.training


@given(seed=seeds, lr=st.floats(1e-4, 1e-1), decay=st.floats(0.0, 1.0), tied=st.booleans())
def test_weight_decay_shrinks_weight_matrices_only(seed, lr, decay, tied):
    model = _tiny(seed, torch.float64)
    if tied:
        model.out_head.weight = model.tok_emb.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = configure_optimizer(model, lr, decay)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is then zero: only the decay acts
    optimizer.step()
    for name, p in model.named_parameters():
        decayed = name in ("mix.weight", "out_head.weight") and not (tied and "out_head" in name)
        factor = 1 - lr * decay if decayed else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-12, atol=0)


@settings(max_examples=20)
@given(seed=seeds, lr=st.floats(1e-4, 1e-1), decay=st.floats(0.0, 1.0), steps=st.integers(1, 3))
def test_the_fused_optimizer_takes_the_steps_of_torchs_plain_adamw(seed, lr, decay, steps):
    model, reference = _tiny(seed, torch.float64), _tiny(seed, torch.float64)
    optimizer = configure_optimizer(model, lr, decay)
    assert optimizer.defaults["fused"]  # one pass per tensor (benchmarks/README.md)
    by_name = dict(reference.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    plain = torch.optim.AdamW(
        [{"params": [by_name[names[id(p)]] for p in group["params"]],
          "weight_decay": group["weight_decay"]} for group in optimizer.param_groups],
        lr=lr, foreach=False)
    g = generator(seed + 1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            by_name[names[id(p)]].grad = p.grad.clone()
        optimizer.step()
        plain.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, by_name[name], rtol=1e-12, atol=1e-15)


def _tiny_gpt(seed: int, dtype: torch.dtype = torch.float64, drop_rate: float = 0.0) -> GPTModel:
    cfg = GPTConfig(vocab_size=32, context_length=8, emb_dim=8, n_heads=2, n_layers=2,
                    drop_rate=drop_rate)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPTModel(cfg).to(dtype)


@settings(max_examples=20)
@given(seed=seeds, lr=st.floats(1e-4, 1e-1), modes=st.lists(st.booleans(), min_size=2,
                                                            max_size=4))
def test_the_fused_optimizer_takes_plain_adamws_steps_while_eval_and_train_change_layouts(
        seed, lr, modes):
    # Steps alternate between eval mode (widening weights column-major) and training mode (row-
    # major), so moments made under one layout are used under the other; gradients come in
    # either layout. torch's fused kernel alone would read them with the wrong strides.
    model, reference = _tiny_gpt(seed), _tiny_gpt(seed)
    optimizer = configure_optimizer(model, lr, 0.1)
    by_name = dict(reference.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    plain = torch.optim.AdamW(
        [{"params": [by_name[names[id(p)]] for p in group["params"]],
          "weight_decay": group["weight_decay"]} for group in optimizer.param_groups],
        lr=lr, foreach=False)
    g = generator(seed + 1)
    for training in modes:
        model.train(training)
        for p in model.parameters():
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            by_name[names[id(p)]].grad = grad
            p.grad = grad.t().contiguous().t() if p.dim() == 2 and training else grad.clone()
        optimizer.step()
        plain.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, by_name[name], rtol=1e-12, atol=1e-15)


@settings(max_examples=10)
@given(seed=seeds, steps=st.integers(2, 4), data=st.data())
def test_an_evaluation_between_steps_leaves_training_bit_for_bit_unchanged(seed, steps, data):
    evaluated = data.draw(st.integers(1, steps - 1), label="evaluated after step")
    x, y = _batch(seed, 2, 8)
    runs = []
    for evaluate_between in (False, True):
        model = _tiny_gpt(seed, torch.float32, drop_rate=0.2).train()
        optimizer = configure_optimizer(model, 1e-2, 0.1)
        losses = []
        for step in range(steps):
            torch.manual_seed(seed + step)  # the same dropout masks in both runs
            losses.append(train_step(model, optimizer, [(x, y)], "cpu", grad_clip=1.0))
            if evaluate_between and step + 1 == evaluated:
                evaluate(model, [(x, y)], [(y, x)], "cpu", 1)  # eval(), then train() again
        runs.append((losses, model, optimizer))
    (losses, model, optimizer), (losses_evaluated, model_evaluated, optimizer_evaluated) = runs
    assert losses == losses_evaluated
    for p, q in zip(model.parameters(), model_evaluated.parameters(), strict=True):
        assert torch.equal(p, q) and p.stride() == q.stride()
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, optimizer_evaluated.state[q][key])


@given(seed=seeds, scale=st.floats(1e-3, 1e3), clip=st.floats(1e-2, 10.0))
def test_clipping_bounds_the_global_gradient_norm(seed, scale, clip):
    model = _tiny(seed, torch.float64)
    x, y = _batch(seed, 2, 4)
    with torch.no_grad():
        model.out_head.weight.mul_(scale)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    _, norm = train_step(model, optimizer, [(x, y)], "cpu", grad_clip=clip)
    model.zero_grad()
    calc_loss_batch(x, y, model, "cpu").backward()
    raw = math.sqrt(sum((p.grad.double() ** 2).sum().item() for p in model.parameters()))
    assert math.isclose(norm, raw, rel_tol=1e-9)
    train_step(model, optimizer, [(x, y)], "cpu", grad_clip=clip)
    clipped = math.sqrt(sum((p.grad ** 2).sum().item() for p in model.parameters()))
    assert clipped <= clip * (1 + 1e-6)
    assert math.isclose(clipped, min(raw, clip), rel_tol=1e-5)


@given(seed=seeds, k=st.integers(1, 4), micro=st.integers(1, 3), length=st.integers(1, 5))
def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(seed, k, micro, length):
    x, y = _batch(seed, k * micro, length)
    grads = []
    for parts in ([(x, y)], list(zip(x.split(micro), y.split(micro), strict=True))):
        model = _tiny(seed, torch.float64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        loss, _ = train_step(model, optimizer, parts, "cpu")
        grads.append(([p.grad.clone() for p in model.parameters()], loss))
    (whole, whole_loss), (accumulated, accumulated_loss) = grads
    assert math.isclose(whole_loss, accumulated_loss, rel_tol=1e-12)
    for a, b in zip(whole, accumulated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@settings(max_examples=3)  # each example trains a GPT for 60 steps (~1 s)
@given(token=st.integers(0, 15), seed=seeds)
def test_loss_on_a_constant_corpus_goes_to_near_zero(token, seed):
    tokens = np.full(600, token, dtype=np.uint16)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=16, context_length=8,
                                             drop_rate=0.0))
    cfg = TrainConfig(batch_size=4, max_steps=60, lr=1e-2, min_lr=1e-3, warmup_steps=5,
                      eval_interval=60, eval_iters=2, checkpoint_interval=60, seed=seed % 1000)
    with tempfile.TemporaryDirectory() as run:
        records = train(model, tokens[:500], tokens[500:], cfg, run, context_length=8,
                        progress=False, plot=False)
    assert records[0]["loss"] > 1.0
    assert records[-1]["val_loss"] < 0.05


def _tiny_run(run: str, seed: int, steps: int = 6, **kwargs) -> list[dict]:
    tokens = np.random.default_rng(0).integers(0, 32, 800).astype(np.uint16)
    cfg = TrainConfig(batch_size=3, max_steps=steps, lr=1e-2, warmup_steps=2, eval_interval=3,
                      eval_iters=1, checkpoint_interval=2, seed=seed)
    return train(_tiny(seed, drop_rate=0.3), tokens[:700], tokens[700:], cfg, run,
                 context_length=6, progress=False, plot=False, **kwargs)


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=5)  # each example runs three short trainings with checkpoints
def test_the_same_seed_gives_the_same_losses_step_for_step(seed):
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        torch.manual_seed(seed + 1)  # the global RNG state must not matter
        first = _tiny_run(a, seed)
        torch.manual_seed(seed + 2)
        second = _tiny_run(b, seed)
        other = _tiny_run(b, seed + 1)
    assert first == second
    assert [r.get("loss") for r in first] != [r.get("loss") for r in other]


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
def test_a_run_killed_with_sigkill_and_resumed_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses: same kernels, same rounding
    try:
        run_in_process(str(whole))
    finally:
        torch.set_num_threads(threads)
    died = run(str(killed), "--kill-at", "5")
    assert died.returncode == -9, died.stderr
    assert [r["step"] for r in read_metrics(killed) if "loss" in r][-1] == 5  # died past step 4
    resumed = run(str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (whole / "metrics.jsonl").read_bytes() == (killed / "metrics.jsonl").read_bytes()
    final = "checkpoints/step-00000008/model.safetensors"
    assert (whole / final).read_bytes() == (killed / final).read_bytes()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in ``train`` catches it, so nothing more is written."""


def _epoch_run(run: Path, seed: int, accum: int, batch: int, steps: int, interval: int,
               kill_at: int | None = None, resume: bool = False) -> list[dict]:
    # 24 windows of 4 tokens: an epoch is 24 // (batch * accum) steps, a handful.
    tokens = np.random.default_rng(seed).integers(0, 32, 24 * 4 + 1 + 16).astype(np.uint16)
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, max_steps=steps, lr=1e-2,
                      warmup_steps=1, eval_interval=3, eval_iters=1, checkpoint_interval=interval,
                      seed=seed)

    def kill(record: dict) -> None:
        if record["step"] == kill_at:
            raise _Killed

    return train(_tiny(seed, drop_rate=0.3), tokens[:97], tokens[97:], cfg, run,
                 context_length=4, progress=False, plot=False, resume=resume, on_step=kill)


@settings(max_examples=5)  # each example trains a tiny model three times, in this process
@given(seed=st.integers(0, 2**31 - 1), accum=st.integers(2, 3), batch=st.integers(1, 3),
       data=st.data())
def test_a_run_killed_after_epoch_boundaries_resumes_bit_for_bit_with_accumulation(
        tmp_path_factory, seed, accum, batch, data):
    per_epoch = 24 // (batch * accum)
    steps = data.draw(st.integers(2 * per_epoch + 1, 3 * per_epoch + 2), label="steps")
    interval = data.draw(st.integers(1, per_epoch + 1), label="checkpoint_interval")
    # Killed past a checkpoint at or beyond the first epoch boundary (always before the end).
    first = interval * -(-per_epoch // interval)
    kill_at = data.draw(st.integers(first, steps - 1), label="kill_at")
    whole, killed = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("killed")
    _epoch_run(whole, seed, accum, batch, steps, interval)
    with pytest.raises(_Killed):
        _epoch_run(killed, seed, accum, batch, steps, interval, kill_at=kill_at)
    resumed_from = load_checkpoint(killed).meta
    assert resumed_from["data_position"]["epoch"] >= 1, resumed_from
    _epoch_run(killed, seed, accum, batch, steps, interval, resume=True)
    assert (whole / "metrics.jsonl").read_bytes() == (killed / "metrics.jsonl").read_bytes()
    final = f"checkpoints/step-{steps:08d}"
    for name in ("model.safetensors", "state.pt"):
        assert (whole / final / name).read_bytes() == (killed / final / name).read_bytes()


def test_non_finite_weights_stop_the_run_before_they_are_saved(tmp_path, monkeypatch):
    real_step = training_module.train_step

    def poisoning_step(model, optimizer, micro, device, **kwargs):
        out = real_step(model, optimizer, micro, device, **kwargs)
        if kwargs["step"] == 4:  # a finite loss, then weights that are not (as NaN decay gives)
            with torch.no_grad():
                model.out_head.weight[0, 0] = float("nan")
        return out

    monkeypatch.setattr(training_module, "train_step", poisoning_step)
    with pytest.raises(TrainingDivergedError, match=r"out_head\.weight.* holds NaN or infinity"
                                                    r": training diverged by step 4"):
        _tiny_run(str(tmp_path), 5, steps=4)
    assert load_checkpoint(tmp_path).meta["step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.json", "step-00000002"]
    with pytest.raises(ValueError, match=r"^weight_decay must be a float >= 0 \(finite\), got nan"):
        TrainConfig(weight_decay=float("nan")).validate()
    with pytest.raises(ValueError, match=r"^betas must be two numbers in \[0, 1\)"):
        TrainConfig(betas=(0.9, float("nan"))).validate()


def test_ctrl_c_saves_the_step_reached_and_a_second_aborts_at_once(tmp_path):
    # Python's own Ctrl-C handler, even where the shell that started pytest ignores SIGINT.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_twice(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_twice(tmp_path):
    def ctrl_c(presses: dict[int, int]):
        def on_step(record: dict) -> None:
            for _ in range(presses.get(record["step"], 0)):
                signal.raise_signal(signal.SIGINT)
        return on_step

    with pytest.raises(training_module.TrainingInterrupted) as stopped:  # once during step 3
        _tiny_run(str(tmp_path), 5, steps=6, on_step=ctrl_c({3: 1}))
    assert stopped.value.step == 3 and load_checkpoint(tmp_path).meta["step"] == 3
    assert stopped.value.checkpoint == latest_checkpoint(tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt) as aborted:  # twice during step 5
        _tiny_run(str(tmp_path), 5, steps=6, resume=True, on_step=ctrl_c({5: 2}))
    assert not isinstance(aborted.value, training_module.TrainingInterrupted)
    assert load_checkpoint(tmp_path).meta["step"] == 4  # the second press saved nothing more
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_saves_the_step_reached_as_ctrl_c_does_and_a_second_aborts(tmp_path):
    # SIGTERM is what a scheduler or a container stop sends before it kills.
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        def term(at: int, times: int):
            def on_step(record: dict) -> None:
                if record["step"] == at:
                    for _ in range(times):
                        signal.raise_signal(signal.SIGTERM)
            return on_step

        with pytest.raises(training_module.TrainingInterrupted) as stopped:
            _tiny_run(str(tmp_path), 5, steps=6, on_step=term(3, 1))
        assert (stopped.value.step, stopped.value.signal) == (3, "SIGTERM")
        assert load_checkpoint(tmp_path).meta["step"] == 3  # a resume goes on from step 3
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(KeyboardInterrupt) as aborted:
            _tiny_run(str(tmp_path), 5, steps=6, resume=True, on_step=term(5, 2))
        assert not isinstance(aborted.value, training_module.TrainingInterrupted)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_bad_grad_clip_is_refused_before_the_step_changes_anything():
    model = _tiny(0)
    optimizer = configure_optimizer(model, 1e-2, 0.0)
    batch = (torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    before = [p.detach().clone() for p in model.parameters()]
    for bad, kind in ((-1.0, ValueError), (0.0, ValueError), (float("inf"), ValueError),
                      ("1", TypeError), (True, TypeError)):
        with pytest.raises(kind, match=r"^grad_clip must be a float > 0 or None") as refused:
            train_step(model, optimizer, [batch], "cpu", grad_clip=bad)
        assert refused.value.parameter == "grad_clip"
        assert all(p.grad is None for p in model.parameters())  # no backward either
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert check_grad_clip(None) is None and check_grad_clip(0.5) == 0.5


def test_a_nan_loss_stops_at_its_step_and_leaves_the_last_checkpoint_intact(tmp_path):
    _tiny_run(str(tmp_path), 3, steps=2)
    weights = tmp_path / "checkpoints" / "step-00000002" / "model.safetensors"
    poisoned = load_file(weights)
    poisoned["out_head.bias"][0] = float("nan")
    save_file(poisoned, weights)
    before = {p.name: p.read_bytes() for p in weights.parent.iterdir()}
    with pytest.raises(TrainingDivergedError, match="step 3"):
        _tiny_run(str(tmp_path), 3, steps=6, resume=True)
    assert {p.name: p.read_bytes() for p in weights.parent.iterdir()} == before
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 2


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
@pytest.mark.appendix_d
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--steps", "4", "--drop-rate", "0"]
    run_in_process(str(tmp_path / "one"), steps=4, batch_size=4, drop_rate=0.0)
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", str(SCRIPT), str(tmp_path / "two"),
                             "--batch-size", "2", *common], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert double.returncode == 0, double.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [sorted(r) for r in one] == [sorted(r) for r in two]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "val_loss"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-5), (key, a, b)
    final = "checkpoints/step-00000004/model.safetensors"
    w1, w2 = load_file(tmp_path / "one" / final), load_file(tmp_path / "two" / final)
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)


def test_bad_training_arguments_name_the_parameter(tmp_path):
    tokens = np.zeros(100, dtype=np.uint16)
    model = _tiny(0)
    for field, value in [("batch_size", 0), ("grad_accum", 0), ("max_steps", 0),
                         ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", float("nan")),
                         ("val_fraction", 1.5), ("eval_interval", 0),
                         ("batch_size", True), ("epochs", 2.0), ("max_steps", True),
                         ("grad_clip", "1"), ("keep_checkpoints", 0), ("eval_iters", -1),
                         ("lr", -1.0), ("lr", float("nan")), ("lr", 0.0)]:
        wrong_type = isinstance(value, (bool, str)) or (field != "grad_clip" and
                                                         isinstance(value, float)
                                                         and field not in ("lr", "val_fraction"))
        with pytest.raises(TypeError if wrong_type else ValueError,
                           match=rf"^{field} must be") as caught:
            train(model, tokens, tokens, TrainConfig(**{field: value}), tmp_path,
                  context_length=4, progress=False)
        assert caught.value.parameter == field
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3).validate()
    with pytest.raises(ValueError, match="bf16"):
        train(model, tokens, tokens, TrainConfig(bf16=True), tmp_path, context_length=4,
              progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(model, tokens[:20], tokens, TrainConfig(batch_size=8), tmp_path, context_length=4,
              progress=False)
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(model, 0.0, 0.1)
