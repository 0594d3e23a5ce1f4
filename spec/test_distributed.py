"""Spec for machinery.distributed: FSDP2 under torchrun equals one process, and resumes.

Reference: the same run in one process reading the whole global batch (the loop's own
single-process path, which ``test_training`` checks against float64 losses and exact resume).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from gpt_components.machinery.distributed import full_state, load_optimizer_state, parallelize
from gpt_components.machinery.metrics import read_metrics
from gpt_components.training import TrainConfig
from spec._train_script import run as run_in_process
from spec.test_training import ROOT, SCRIPT

pytestmark = pytest.mark.appendix_d
FINAL = "checkpoints/step-00000004"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
def test_fsdp_on_two_gloo_processes_equals_one_process_and_resumes_bit_for_bit(tmp_path):
    run_in_process(str(tmp_path / "one"), steps=4, batch_size=4, drop_rate=0.0)
    sharded = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", str(SCRIPT), str(tmp_path / "two"), "--batch-size", "2",
         "--steps", "4", "--drop-rate", "0", "--strategy", "fsdp",
         "--resume-copy", str(tmp_path / "resumed")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True, text=True,
        timeout=180)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [sorted(r) for r in one] == [sorted(r) for r in two]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "val_loss", "train_eval_loss", "grad_norm"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-5), (key, a, b)
    # The checkpoint holds the whole model, gathered from the shards, as one process saves it.
    w1, w2 = (load_file(tmp_path / run / FINAL / "model.safetensors") for run in ("one", "two"))
    assert sorted(w1) == sorted(w2)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    state = torch.load(tmp_path / "two" / FINAL / "state.pt", weights_only=True)["optimizer"]
    assert {name: moments["exp_avg"].shape for name, moments in state["state"].items()} == {
        name: w1[name].shape for name in state["state"]}
    # Resumed from step 2's checkpoint, the sharded run ends exactly where it ended unbroken.
    resumed = load_file(tmp_path / "resumed" / FINAL / "model.safetensors")
    assert all(torch.equal(resumed[name], w2[name]) for name in w2)
    def losses(records):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]

    assert losses(read_metrics(tmp_path / "resumed")) == losses(two)


def test_one_process_trains_as_it_is_and_the_optimizer_state_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert parallelize(model, "fsdp", torch.device("cpu"), world=1) is model
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    weights, state = full_state(model, optimizer, "fsdp")
    assert weights.keys() == model.state_dict().keys()
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    load_optimizer_state(model, fresh, state)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    # A sharded run's name-keyed state (torch's own format) resumes in one process as well.
    by_name = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True))
    again = torch.optim.AdamW(model.parameters(), lr=0.1)
    load_optimizer_state(model, again, by_name)
    expected, loaded = optimizer.state_dict(), again.state_dict()
    assert loaded["param_groups"] == expected["param_groups"]
    for index, moments in expected["state"].items():
        assert all(torch.equal(loaded["state"][index][k], v) for k, v in moments.items())


def test_an_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"^strategy must be one of \['ddp', 'fsdp'\], got 'zero'"):
        TrainConfig(strategy="zero").validate()
    with pytest.raises(ValueError, match=r"^strategy must be one of \['ddp', 'fsdp'\], got 'zero'"):
        parallelize(torch.nn.Linear(1, 1), "zero", torch.device("cpu"), world=2)


def test_the_train_command_takes_the_strategy(capsys):
    from gpt_components.cli import build_parser, main

    assert build_parser().parse_args(["train", "--strategy", "fsdp"]).strategy == "fsdp"
    assert build_parser().parse_args(["train"]).strategy == "ddp"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--strategy", "zero"])
    assert exit_info.value.code == 2
    assert "--strategy: invalid choice: 'zero'" in capsys.readouterr().err
