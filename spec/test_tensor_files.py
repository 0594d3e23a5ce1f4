"""Files that are not what they claim: every reader of weights names the file and the fault.

A pickle, a ``torch.save`` archive, JSON, an empty or a truncated file under the name
``model.safetensors``; a run whose weights have a tensor too many, too few, of another shape or of
an integer dtype; a damaged ``state.pt`` or latest checkpoint. Each reaches the user as one line
naming the file (and the tensor), never as a traceback, and a pickle's code never runs.
"""

import json
import os
import pickle
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import gpt_components
from gpt_components import (
    CheckpointError,
    GPTConfig,
    GPTModel,
    TensorFileError,
    check_state_dict,
    load_checkpoint,
    load_classifier,
    load_lora,
    load_pretrained,
    make_classifier,
    read_safetensors,
    replace_linear_with_lora,
    safetensors_header,
    save_classifier,
    save_lora,
    save_pretrained,
    stream_safetensors,
)
from gpt_components.cli import main
from gpt_components.finetune.commands import load_start_model
from gpt_components.machinery.resources import load_text
from spec.strategies import generator, seeds

pytestmark = pytest.mark.machinery

TINY_RUN = ["--preset", "gpt-nano", "--context-length", "16", "--batch-size", "2", "--steps", "3",
            "--eval-interval", "3", "--eval-iters", "1", "--sample-tokens", "0", "--no-progress",
            "--checkpoint-interval", "2"]


class _System:
    """Unpickled by an ordinary unpickler, this runs ``touch MARKER``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fake_weights(kind: str, marker) -> bytes:
    """The bytes of a file that claims to be safetensors and is not."""
    if kind == "pickle":
        return pickle.dumps({"wte": _System(str(marker))}, protocol=2)
    if kind == "torch.save":
        path = marker.parent / "archive.pt"
        torch.save({"wte": torch.ones(2)}, path)
        return path.read_bytes()
    if kind == "json":
        return b'{"wte": [1, 2, 3]}'
    if kind == "empty":
        return b""
    save_file({"wte": torch.ones(64)}, marker.parent / "real.safetensors")
    return (marker.parent / "real.safetensors").read_bytes()[:-17]  # "truncated"


FAKES = ["pickle", "torch.save", "json", "empty", "truncated"]


def _expected(kind: str) -> str:
    return "is truncated or corrupted" if kind == "truncated" else "is not a safetensors file"


@pytest.fixture(scope="module")
def tiny_model():
    return GPTModel(GPTConfig(vocab_size=50257, context_length=8, emb_dim=8, n_heads=2,
                              n_layers=1, drop_rate=0.0))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One small run made by ``gpt-components train``, checkpoints at steps 2 and 3."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(load_text("the-verdict.txt")[:3000], encoding="utf-8")
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(root / "run"),
                 *TINY_RUN]) == 0
    return root / "run"


@pytest.fixture
def run(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("gpt-components: error: ")
    assert "Traceback" not in captured.err and "SafetensorError" not in captured.err
    return captured.err


@pytest.mark.parametrize("kind", FAKES)
@pytest.mark.parametrize("reader", ["from_pretrained directory", "from_pretrained file",
                                    "load_lora", "load_checkpoint", "load_classifier",
                                    "from_pretrained llama directory"])
def test_a_file_that_is_not_safetensors_is_refused_by_every_reader_naming_it(
        kind, reader, tmp_path, tiny_model):
    marker = tmp_path / "code-ran"
    directory = tmp_path / "weights"
    if reader == "load_checkpoint":
        from gpt_components import save_checkpoint

        directory = save_checkpoint(tmp_path, model=tiny_model, state={}, meta={"step": 1})
    elif reader == "load_classifier":
        save_classifier(make_classifier(GPTModel(tiny_model.cfg), 2), directory)
    elif reader == "from_pretrained llama directory":
        from gpt_components import registry

        llama = registry.preset_config("llama3-nano", vocab_size=16, n_layers=1)
        gpt_components.save_pretrained(registry.build_model(llama), directory)
    else:
        save_pretrained(tiny_model, directory)
    weights = directory / "model.safetensors"
    weights.write_bytes(_fake_weights(kind, marker))
    calls = {
        "from_pretrained directory": lambda: GPTModel.from_pretrained(directory),
        "from_pretrained file": lambda: load_pretrained(weights),
        "load_lora": lambda: load_lora(GPTModel(tiny_model.cfg), weights),
        "load_checkpoint": lambda: load_checkpoint(tmp_path),
        "load_classifier": lambda: load_classifier(directory),
        "from_pretrained llama directory": lambda: gpt_components.from_pretrained(directory),
    }
    with pytest.raises(ValueError, match=re.escape(f"'{weights}' {_expected(kind)}")) as refused:
        calls[reader]()
    assert "\n" not in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["generate DIR", "generate FILE", "classify",
                                     "instruction-responses", "finetune-classifier --weights",
                                     "finetune-classifier --run", "generate RUN"])
def test_every_command_reports_a_pickle_named_model_safetensors_in_one_line(
        command, tmp_path, capsys, tiny_model, run):
    marker = tmp_path / "code-ran"
    directory = tmp_path / "weights"
    if command == "classify":
        save_classifier(make_classifier(GPTModel(tiny_model.cfg), 2), directory)
    else:
        save_pretrained(tiny_model, directory)
    weights = directory / "model.safetensors"
    if command.endswith("RUN") or command.endswith("--run"):
        weights = run / "checkpoints" / "step-00000003" / "model.safetensors"
    weights.write_bytes(_fake_weights("pickle", marker))
    argv, flag = {
        "generate DIR": (["generate", str(directory)], "source"),
        "generate FILE": (["generate", str(weights)], "source"),
        "generate RUN": (["generate", str(run)], "source"),
        "classify": (["classify", "hello", "--model", str(directory)], "--model"),
        "instruction-responses": (["instruction-responses", "--model", str(directory)],
                                  "--model"),
        "finetune-classifier --weights": (["finetune-classifier", "--out", str(tmp_path / "o"),
                                           "--weights", str(directory)], "--weights"),
        "finetune-classifier --run": (["finetune-classifier", "--out", str(tmp_path / "o"),
                                       "--run", str(run)], "--run"),
    }[command]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"gpt-components: error: {flag}")
    assert f"'{weights}' is not a safetensors file: it is a Python pickle" in err
    assert not marker.exists()


def _damage(weights_file, fault: str) -> tuple[str, str]:
    """Rewrite a run's weights with one fault; (the tensor it touches, words the error holds)."""
    tensors = read_safetensors(weights_file)
    name = "trf_blocks.0.att.W_query.weight"
    if fault == "shape":
        tensors[name] = torch.zeros(3, 5)
        words = f"tensor '{name}' has shape (3, 5), the model expects (48, 48)"
    elif fault == "missing":
        del tensors[name]
        words = f"has no tensor '{name}', which the model needs"
    elif fault == "extra":
        name = "trf_blocks.9.att.W_query.weight"
        tensors[name] = torch.zeros(2)
        words = f"holds tensor '{name}', which the model has no place for"
    else:
        tensors[name] = tensors[name].to(torch.int64)
        words = (f"tensor '{name}' has dtype torch.int64, the model expects floating-point "
                 "weights (torch.float32)")
    save_file(tensors, weights_file)
    return name, words


# Every fault meets check_state_dict's property below; here each command meets some of them.
@pytest.mark.parametrize("command, fault", [
    ("generate", "shape"), ("generate", "int64"), ("train --resume", "missing"),
    ("train --resume", "shape"), ("finetune-classifier --run", "extra"),
    ("finetune-classifier --run", "int64")])
def test_a_run_whose_weights_do_not_fit_its_model_names_the_tensor(fault, command, run, capsys,
                                                                   tmp_path):
    weights = run / "checkpoints" / "step-00000003" / "model.safetensors"
    _, words = _damage(weights, fault)
    argv = {"generate": ["generate", str(run), "--max-new-tokens", "2"],
            "train --resume": ["train", "--resume", str(run), "--steps", "4", "--no-progress"],
            "finetune-classifier --run": ["finetune-classifier", "--run", str(run), "--out",
                                          str(tmp_path / "o")]}[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert f"'{weights}'" in err and words in err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_converted_and_the_user_is_told(dtype, run, capsys):
    weights = run / "checkpoints" / "step-00000003" / "model.safetensors"
    original = read_safetensors(weights)
    save_file({k: v.to(dtype) for k, v in original.items()}, weights)
    capsys.readouterr()
    assert main(["generate", str(run), "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err == (f"gpt-components: warning: '{weights}': converted weights "
                                       f"from {dtype} to torch.float32\n")


@settings(max_examples=30)
@given(data=st.data())
def test_check_state_dict_names_the_first_misfit_and_converts_only_floats(data):
    names = data.draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5, unique=True))
    shapes = {n: tuple(data.draw(st.lists(st.integers(1, 3), max_size=2))) for n in names}
    expected = {n: torch.zeros(s) for n, s in shapes.items()}
    found = {n: torch.ones(s, dtype=data.draw(st.sampled_from([torch.float32, torch.float64])))
             for n, s in shapes.items()}
    fault = data.draw(st.sampled_from(["none", "missing", "extra", "shape", "integer"]))
    victim = data.draw(st.sampled_from(names))
    if fault == "missing":
        del found[victim]
    elif fault == "extra":
        victim = "z"
        found[victim] = torch.ones(1)
    elif fault == "shape":
        found[victim] = torch.ones(*shapes[victim], 2)
    elif fault == "integer":
        found[victim] = found[victim].to(data.draw(st.sampled_from([torch.int64, torch.bool,
                                                                    torch.uint8])))
    if fault == "none":
        converts = any(t.dtype != torch.float32 for t in found.values())
        with pytest.warns(UserWarning, match="converted weights from torch.float64") if converts \
                else _no_warning():
            out = check_state_dict(expected, found, "f.safetensors")
        assert all(out[n].dtype == torch.float32 and torch.equal(out[n], found[n].float())
                   for n in names)
    else:
        with pytest.raises(TensorFileError, match=rf"^'f\.safetensors'.*'{victim}'"):
            check_state_dict(expected, found, "f.safetensors")


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def test_a_truncated_state_pt_does_not_stop_generate(run, capsys):
    state = run / "checkpoints" / "step-00000003" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert main(["generate", str(run), "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("Every effort moves you")
    model, _, origin = load_start_model(run=str(run))  # finetuning from a run needs only weights
    assert origin.endswith("(step 3)") and model.cfg.context_length == 16


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
@pytest.mark.parametrize("damaged", ["state.pt", "model.safetensors", "latest.json"])
def test_a_damaged_latest_checkpoint_names_the_intact_older_one_and_the_command_works(
        damaged, run, capsys):
    latest = run / "checkpoints" / "step-00000003"
    target = run / "checkpoints" / "latest.json" if damaged == "latest.json" else latest / damaged
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(run)
    message = str(error.value)
    assert str(target) in message and "\n" not in message
    older = 3 if damaged == "latest.json" else 2  # a bad pointer leaves step 3 itself intact
    assert f"the older checkpoint step-{older:08d} is intact: make it the latest with: " in message
    command = message.split("make it the latest with: ", 1)[1]
    subprocess.run(command, shell=True, check=True)
    assert load_checkpoint(run).meta["step"] == older
    if damaged == "state.pt":  # resuming costs a training step: once is enough
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
        assert load_checkpoint(run).meta["step"] == 3


def test_a_damaged_checkpoint_without_an_intact_older_one_says_only_what_is_wrong(run):
    for step in ("step-00000002", "step-00000003"):
        state = run / "checkpoints" / step / "state.pt"
        state.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(run)
    assert "intact" not in str(error.value) and "state.pt" in str(error.value)


def test_a_lora_file_that_is_a_pickle_is_refused_before_anything_changes(tmp_path, tiny_model):
    model = GPTModel(tiny_model.cfg)
    replace_linear_with_lora(model, rank=2, alpha=2.0)
    save_lora(model, tmp_path / "lora.safetensors")
    assert sorted(load_lora(GPTModel(tiny_model.cfg), tmp_path / "lora.safetensors")
                  .state_dict()) == sorted(model.state_dict())
    (tmp_path / "lora.safetensors").write_bytes(_fake_weights("pickle", tmp_path / "m"))
    with pytest.raises(TensorFileError, match="is not a safetensors file"):
        load_lora(GPTModel(tiny_model.cfg), tmp_path / "lora.safetensors")
    assert not (tmp_path / "m").exists()


def test_a_run_config_that_is_not_json_is_named_by_generate(run, capsys):
    (run / "config.json").write_text("{not json", encoding="utf-8")
    assert main(["generate", str(run)]) == 2
    assert f"'{run / 'config.json'}' is not a run configuration" in _one_line_error(capsys)


def test_generate_reads_a_checkpoint_directory_of_a_run(run, capsys):
    capsys.readouterr()
    assert main(["generate", str(run / "checkpoints" / "step-00000002"),
                 "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("Every effort moves you")
    meta = json.loads((run / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["step"] == 2


def test_finetuning_reads_weights_with_the_tokenizer_files_beside_them(tmp_path, tiny_model):
    # Real Llama 3 / Qwen3 / Gemma 3 weights come with their own tokenizer: GPT-2's ids would
    # feed such a model the wrong tokens without a word.
    from gpt_components.bpe import BPETokenizer
    from gpt_components.machinery.sources import save_tokenizer

    learned = BPETokenizer.train("a small corpus, a small vocabulary", vocab_size=270)
    save_pretrained(tiny_model, tmp_path / "weights")
    for weights in (tmp_path / "weights", tmp_path / "weights" / "model.safetensors"):
        _, tokenizer, origin = load_start_model(weights=str(weights))
        assert tokenizer.name == "gpt2" and origin == f"starting from weights {weights}"
    save_tokenizer(learned, tmp_path / "weights")
    for weights in (tmp_path / "weights", tmp_path / "weights" / "model.safetensors"):
        _, tokenizer, _ = load_start_model(weights=str(weights))
        assert tokenizer.name == learned.name and tokenizer.eot_token == learned.n_vocab - 1
    (tmp_path / "weights" / "encoder.json").unlink()
    (tmp_path / "weights" / "tokenizer.json").write_text("{not json")  # not GPT-2's ids instead
    with pytest.raises(ValueError, match="^weights: the weights' tokenizer could not be read: "
                                         ".* is not a readable tokenizer.json") as refused:
        load_start_model(weights=str(tmp_path / "weights"))
    assert refused.value.parameter == "weights"  # the CLI names --weights from it


@given(st.lists(st.tuples(st.sampled_from([torch.float64, torch.float32, torch.bfloat16,
                                           torch.float16, torch.int64, torch.int8, torch.bool]),
                          st.lists(st.integers(0, 4), max_size=3)), min_size=1, max_size=5),
       seeds)
@settings(deadline=None, max_examples=20)
def test_streamed_safetensors_equal_what_the_safetensors_library_reads(specs, seed):
    g = generator(seed)
    tensors = {f"t{i}": (torch.randn(shape, generator=g) * 50).to(dtype)
               for i, (dtype, shape) in enumerate(specs)}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        streamed = dict(stream_safetensors(path))
        expected = {k: v.clone() for k, v in load_file(str(path)).items()}  # not the file's map
        path.write_bytes(path.read_bytes()[:-1])
        if any(t.numel() for t in tensors.values()):
            with pytest.raises(ValueError, match="is truncated or corrupted"):
                dict(stream_safetensors(path))
    assert streamed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert streamed[name].dtype == tensor.dtype and torch.equal(streamed[name], tensor)


def test_the_header_alone_names_a_truncated_file_and_an_unknown_dtype(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(4, 2), "b": torch.zeros(3, dtype=torch.int8)}, str(path))
    header = safetensors_header(path)
    assert {k: (v.dtype, v.shape) for k, v in header.items()} == {
        "a": (torch.float32, (4, 2)), "b": (torch.int8, (3,))}
    assert max(entry.end for entry in header.values()) == path.stat().st_size
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(TensorFileError, match=r"is truncated or corrupted \(tensor '.' does not "
                                              r"fit its \d+ bytes\)"):
        safetensors_header(path)
    raw = json.dumps({"c": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0")
    with pytest.raises(TensorFileError, match="tensor 'c' has dtype F8_E4M3, which this reader "
                                              "does not know"):
        safetensors_header(path)

