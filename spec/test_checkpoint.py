"""Properties of checkpoints: exact round trip, atomic writes, no pickle execution, clear errors."""

import errno
import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import checkpoint as ckpt_module
from gpt_components.machinery import atomic as atomic_module
from gpt_components.machinery.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    NonFiniteStateError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from spec.helpers import TinyLM
from spec.strategies import generator, seeds

pytestmark = pytest.mark.machinery

# Every example writes and fsyncs a checkpoint directory (~30 ms): 20 examples keep the file
# within its time budget while still drawing tied/untied models, steps and corruptions.
file_writing = settings(max_examples=20)


def _model(seed: int, tied: bool = False) -> TinyLM:
    model = TinyLM(vocab_size=11, emb_dim=4)
    gen = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        if tied:
            model.out_head.weight = model.tok_emb.weight
    return model


@file_writing
@given(seed=seeds, step=st.integers(0, 10**6), tied=st.booleans())
def test_a_saved_checkpoint_loads_back_bit_for_bit(seed, step, tied):
    model = _model(seed, tied)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    meta = {"step": step, "data_position": {"epoch": 1, "batch": 2}, "config": {"emb_dim": 4}}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / "first"  # made on the first save
        save_checkpoint(run, model=model, state={"optimizer": optimizer.state_dict()}, meta=meta)
        loaded = load_checkpoint(run)
        assert loaded.path == run / "checkpoints" / f"step-{step:08d}"
        assert load_checkpoint(loaded.path).meta == meta  # a checkpoint directory loads too
    assert loaded.meta == meta
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.weights[name], tensor)
    restored = torch.optim.AdamW(_model(seed + 1, tied).parameters(), lr=1e-3)
    restored.load_state_dict(loaded.state["optimizer"])
    for a, b in zip(optimizer.state.values(), restored.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@file_writing
@given(steps=st.lists(st.integers(0, 99), min_size=1, max_size=6, unique=True),
       keep=st.integers(1, 3))
def test_latest_points_at_the_newest_save_and_only_keep_are_kept(steps, keep):
    with tempfile.TemporaryDirectory() as run:
        steps = sorted(steps)
        for step in steps:
            save_checkpoint(run, model=_model(step), state={}, meta={"step": step}, keep=keep)
        assert load_checkpoint(run).meta["step"] == steps[-1]
        kept = sorted(p.name for p in (Path(run) / "checkpoints").glob("step-*"))
        assert kept == [f"step-{s:08d}" for s in steps[-keep:]]
        assert json.loads((Path(run) / "checkpoints" / "latest.json").read_text()) == {
            "step": steps[-1], "path": f"step-{steps[-1]:08d}"}


def test_by_default_the_two_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model=_model(step), state={}, meta={"step": step})
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-00000002", "step-00000003"]


@given(fail_at=st.integers(1, 3))
def test_a_save_killed_midway_leaves_the_previous_checkpoint_usable(fail_at):
    # A crash at any os.replace (checkpoint dir, then the latest.json pointer) is a kill at
    # that instant: the run must still load the earlier step, with its weights, and the next
    # save must succeed and clear what the killed one left behind.
    with tempfile.TemporaryDirectory() as run:
        first = _model(1)
        save_checkpoint(run, model=first, state={}, meta={"step": 1})
        calls = {"n": 0}
        real_replace = os.replace

        def crashing_replace(src, dst):
            calls["n"] += 1
            # Atomic only within one file system: every rename stays inside its directory.
            assert Path(src).parent == Path(dst).parent, (src, dst)
            assert Path(src).name.startswith("."), src
            if calls["n"] == fail_at:
                raise KeyboardInterrupt("killed")
            real_replace(src, dst)

        ckpt_module.os.replace = crashing_replace
        try:
            with pytest.raises(KeyboardInterrupt):
                save_checkpoint(run, model=_model(2), state={}, meta={"step": 2})
                raise KeyboardInterrupt("the save got past its renames")  # fail_at == 3
        finally:
            ckpt_module.os.replace = real_replace
        loaded = load_checkpoint(run)
        expected = 1 if fail_at <= 2 else 2
        assert loaded.meta["step"] == expected
        if expected == 1:
            assert all(torch.equal(loaded.weights[k], v) for k, v in first.state_dict().items())
        again = _model(3)
        save_checkpoint(run, model=again, state={}, meta={"step": 2})
        loaded = load_checkpoint(run)
        assert loaded.meta["step"] == 2
        assert all(torch.equal(loaded.weights[k], v) for k, v in again.state_dict().items())
        left = sorted(p.name for p in (Path(run) / "checkpoints").iterdir())
        assert left == ["latest.json", "step-00000001", "step-00000002"]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _System:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["exec", "os.system"])
@pytest.mark.parametrize("container", ["pickle protocol 2", "pickle protocol 4", "torch.save"])
def test_a_crafted_pickle_is_refused_naming_what_it_would_call_and_never_runs(
        tmp_path, payload, container):
    path = save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": 0})
    marker = tmp_path / "code-ran"
    evil = _Payload(str(marker)) if payload == "exec" else _System(str(marker))
    if container == "torch.save":
        torch.save({"optimizer": evil}, path / "state.pt")
    else:
        with open(path / "state.pt", "wb") as f:
            pickle.dump({"optimizer": evil}, f, protocol=int(container[-1]))
    # sanity: an ordinary unpickler would run it
    with open(path / "state.pt", "rb") as f:
        pickle.load(f) if container != "torch.save" else torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    called = r"\bexec\b" if payload == "exec" else re.escape(f"{os.system.__module__}.system")
    with pytest.raises(CheckpointError, match=rf"^'{re.escape(str(path / 'state.pt'))}' was "
                                              rf"refused and nothing in it was run: .*\(it would "
                                              rf"call (builtins\.)?{called}\)$") as refused:
        load_checkpoint(tmp_path)
    assert not marker.exists()
    message = str(refused.value)
    assert "\x1b" not in message and "\n" not in message
    assert "weights_only" not in message and "False" not in message  # never: turn it off


@pytest.mark.parametrize("wording, reason", [
    ("\x1b[1mTrying to load unsupported GLOBAL posix.system\x1b[0m whose module is blocked",
     "it would call posix.system"),
    ("\n  WeightsUnpickler error: Unsupported global: GLOBAL builtins.eval was not allowed.\n",
     "it would call builtins.eval"),
    ("Re-running `torch.load` with `weights_only` set to `False` will likely succeed",
     "it holds pickle instructions other than tensors and plain values"),
    ("", "it holds pickle instructions other than tensors and plain values"),
])
def test_a_refusal_is_one_clean_line_whatever_torch_says(tmp_path, monkeypatch, wording, reason):
    # torch's wording differs between versions: the refusal keeps the global it names, if any,
    # and never passes on the advice to load with weights_only=False.
    save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": 0})

    def refusing_load(*args, **kwargs):
        raise pickle.UnpicklingError(wording)

    monkeypatch.setattr(torch, "load", refusing_load)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path)
    assert str(refused.value).endswith(f"values ({reason})")
    assert "weights_only" not in str(refused.value)


@file_writing
@given(which=st.sampled_from(["model.safetensors", "state.pt", "meta.json"]),
       keep_fraction=st.floats(0.0, 0.95), garbage=st.booleans())
def test_a_truncated_or_corrupted_file_gives_a_clear_error(which, keep_fraction, garbage):
    with tempfile.TemporaryDirectory() as run:
        model = _model(0)
        opt = torch.optim.AdamW(model.parameters())
        path = save_checkpoint(run, model=model, state={"optimizer": opt.state_dict()},
                               meta={"step": 5})
        data = (path / which).read_bytes()
        cut = data[: int(len(data) * keep_fraction)]
        (path / which).write_bytes(b"\x00\xffnot a checkpoint" * 3 if garbage else cut)
        with pytest.raises(CheckpointError, match=re.escape(str(path / which))):
            load_checkpoint(run)


def test_missing_checkpoints_and_bad_arguments_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=rf"^path must .* got '{re.escape(str(tmp_path))}'$"):
        load_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": -1})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": 1}, keep=0)
    path = save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": 1})
    (path / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=rf"^checkpoint '{re.escape(str(path))}' is missing "
                                              r"state\.pt$"):
        load_checkpoint(path)


@pytest.mark.parametrize("which", ["state.pt", "meta.json"])
def test_a_checkpoint_holding_something_other_than_dicts_is_refused(tmp_path, which):
    path = save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": 1})
    if which == "state.pt":
        torch.save([torch.ones(1)], path / "state.pt")
    else:
        (path / "meta.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match=rf"^checkpoint '{re.escape(str(path))}' must hold "
                                              r"dicts in state\.pt and meta\.json$"):
        load_checkpoint(tmp_path)


def test_the_latest_pointer_wins_and_a_corrupted_one_is_named(tmp_path):
    save_checkpoint(tmp_path, model=_model(0), state={}, meta={"step": 1})
    # A run directory that also holds a meta.json of its own is still read as a run.
    (tmp_path / "meta.json").write_text('{"step": 99}', encoding="utf-8")
    assert load_checkpoint(tmp_path).meta == {"step": 1}
    pointer = tmp_path / "checkpoints" / "latest.json"
    for broken in ("not json", '{"step": 1}', "[]"):
        pointer.write_text(broken, encoding="utf-8")
        with pytest.raises(CheckpointError, match=rf"^pointer '{re.escape(str(pointer))}' is "
                                                  r"corrupted"):
            load_checkpoint(tmp_path)


class _FullDisk:
    """``open`` for a disk with ``room`` bytes left: writing past them fails with ENOSPC."""

    def __init__(self, room: int):
        self.room, self.real = room, open

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = self.real(file, mode, *args, **kwargs)
        if "w" not in mode:
            return handle
        disk, write = self, handle.write

        def limited(data):
            if len(data) > disk.room:
                write(data[: disk.room])
                disk.room = 0
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
            disk.room -= len(data)
            return write(data)

        handle.write = limited
        return handle


@file_writing
@given(seed=seeds, room_fraction=st.floats(0.0, 0.999))
def test_a_full_disk_during_a_save_is_one_clear_error_and_leaves_the_previous_checkpoint(
        seed, room_fraction):
    with tempfile.TemporaryDirectory() as run:
        first = _model(seed)
        save_checkpoint(run, model=first, state={"note": torch.ones(3)}, meta={"step": 1})
        with tempfile.TemporaryDirectory() as sizing:  # how many bytes the second save writes
            second = _model(seed + 1)
            save_checkpoint(sizing, model=second, state={"note": torch.ones(3)}, meta={"step": 2})
            size = sum(p.stat().st_size for p in Path(sizing).rglob("*") if p.is_file())
        # The disk is full for every writer: the checkpoint's files and its latest.json pointer.
        ckpt_module.open = atomic_module.open = _FullDisk(int(size * room_fraction))
        try:
            with pytest.raises(CheckpointWriteError) as full:
                save_checkpoint(run, model=second, state={"note": torch.ones(3)},
                                meta={"step": 2})
        finally:
            del ckpt_module.open, atomic_module.open
        root = Path(run) / "checkpoints"
        assert isinstance(full.value, OSError)
        assert str(full.value) == (
            f"could not write checkpoint '{root / 'step-00000002'}' (No space left on device: "
            f"'{root}'); the previous checkpoint '{root / 'step-00000001'}' is intact")
        assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00000001"]
        loaded = load_checkpoint(run)
        assert loaded.meta == {"step": 1}
        assert all(torch.equal(loaded.weights[k], v) for k, v in first.state_dict().items())


@file_writing
@given(seed=seeds, where=st.sampled_from(["weight", "optimizer"]), value=st.sampled_from(
    [float("nan"), float("inf"), float("-inf")]), index=st.integers(0, 10**6))
def test_non_finite_weights_or_optimizer_state_are_never_written(seed, where, value, index):
    model = _model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as run:
        save_checkpoint(run, model=model, state={"optimizer": optimizer.state_dict()},
                        meta={"step": 1})
        names = sorted(model.state_dict())
        name = names[index % len(names)]
        if where == "weight":
            tensor = dict(model.named_parameters())[name]
            label = f"weight[{name!r}]"
        else:
            slot = list(model.state_dict()).index(name)
            tensor = optimizer.state[list(model.parameters())[slot]]["exp_avg_sq"]
            label = f"state['optimizer']['state'][{slot}]['exp_avg_sq']"
        with torch.no_grad():
            tensor.view(-1)[index % tensor.numel()] = value
        with pytest.raises(NonFiniteStateError, match=re.escape(
                f"refusing to save the checkpoint of step 2: {label} holds NaN or infinity")):
            save_checkpoint(run, model=model, state={"optimizer": optimizer.state_dict()},
                            meta={"step": 2})
        assert sorted(p.name for p in (Path(run) / "checkpoints").iterdir()) == [
            "latest.json", "step-00000001"]
