"""The conformance suite: what every registered family must do, run on each one.

Parametrised over ``registry.FAMILIES`` (GPT-2 included), so a family gets all of it by being
declared. Each property runs on the family's smallest preset with a small vocabulary and every
weight drawn at random: cached decoding equals decoding without a cache, past any sliding window;
``trace`` agrees with ``forward``; bad ids and a cache of the wrong batch are refused before any
work; the model computes in the dtype of its parameters (float64, bfloat16) and builds on the meta
device; where the family has a Hugging Face layout, what ``save_pretrained`` writes loads into
``transformers.AutoModelForCausalLM`` with the same logits and comes back through
``from_pretrained`` unchanged; and the CLI trains, generates from and resumes its nano preset.

``spec/families/mistral_style.py`` declares a family in one file (Llama's parts with a window on
every layer, read by ``transformers``' ``mistral`` model type); every file in ``spec/families/``
is imported here, and that is all it takes for the whole suite to run on it too (a family inside
the package, in ``gpt_components/modern/``, is found without even that). The package's import
graph has no cycle (checked with ``ast`` over every module).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gpt_components
import spec.families
from gpt_components import from_pretrained, save_pretrained
from gpt_components.machinery.registry import (
    FAMILIES,
    Family,
    build_model,
    config_from_dict,
    config_to_dict,
    preset_config,
    preset_names,
)
from gpt_components.modern import DecoderModel
from spec.strategies import generator, seeds

# Every family file in spec/families/, imported: declaring a family registers it, nothing else.
FAMILY_FILES = {info.name: importlib.import_module(f"spec.families.{info.name}")
                for info in pkgutil.iter_modules(spec.families.__path__)}
mistral_style = FAMILY_FILES["mistral_style"]

pytestmark = pytest.mark.modern
F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}
NAMES = sorted(FAMILIES)


def smallest_preset(family: Family) -> str:
    return min(family.presets,
               key=lambda name: family.presets[name].emb_dim * family.presets[name].n_layers)


def tiny_model(name: str, seed: int, dtype: torch.dtype = F64):
    """The family's smallest preset (vocabulary 64, any window 4 wide), every weight drawn, in
    eval mode."""
    family = FAMILIES[name]
    cfg = family.config_class.from_name(smallest_preset(family), vocab_size=64, drop_rate=0.0)
    if window_of(cfg):
        cfg = dataclasses.replace(cfg, sliding_window=4)
    model = family.model_class(cfg).to(dtype)
    g = generator(seed)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64) * 0.3
            p.copy_(noise + 1 if "norm" in param_name and "gemma" not in name else noise)
    return model.eval()


def window_of(cfg) -> int:
    return getattr(cfg, "sliding_window", 0) or 0


def test_the_single_file_family_is_registered_by_being_declared():
    assert mistral_style.FAMILY is FAMILIES["mistral_style"]
    assert mistral_style.MistralStyleConfig.family == "mistral_style"  # the name spelled once
    assert "mistral-style-nano" in preset_names()
    cfg = preset_config("mistral-style-nano")
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    assert {"gpt2", "llama", "qwen3", "gemma3", "qwen3_moe", "deepseek_v3"} <= set(FAMILIES)


@pytest.mark.parametrize("name", NAMES)
def test_a_family_declares_its_config_presets_and_layout_once(name):
    family = FAMILIES[name]
    assert family.config_class.family == name
    assert all(type(cfg) is family.config_class for cfg in family.presets.values())
    for preset, cfg in family.presets.items():
        assert preset_config(preset) == cfg
    assert type(build_model(config_to_dict(family.presets[smallest_preset(family)]))) \
        is family.model_class
    if family.layout is not None:
        assert family.hf_model_types == (family.layout.model_type,)


@pytest.mark.parametrize("name", NAMES)
@settings(deadline=None, max_examples=2)
@given(seed=seeds, first=st.integers(1, 4), batch=st.integers(1, 2))
def test_cached_decoding_equals_uncached_past_any_window(name, seed, first, batch):
    model = tiny_model(name, seed)
    length = window_of(model.cfg) + 6
    ids = torch.randint(0, 64, (batch, length), generator=generator(seed + 1))
    cache = model.new_kv_cache(batch)
    with torch.no_grad():
        pieces = [model(ids[:, :first], kv_cache=cache)]
        pieces += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(first, length)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), model(ids), **EXACT)


@pytest.mark.parametrize("name", NAMES)
@settings(deadline=None, max_examples=1)
@given(seed=seeds, length=st.integers(1, 10))
def test_trace_agrees_with_forward(name, seed, length):
    model = tiny_model(name, seed)
    ids = torch.randint(0, 64, (1, length), generator=generator(seed + 1))
    trace = model.trace(ids)
    with torch.no_grad():
        torch.testing.assert_close(trace.logits, model(ids), **EXACT)
    assert len(trace.residuals) == model.cfg.n_layers + 1
    assert len(trace.attentions) == model.cfg.n_layers
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    # Rows sum to one, less an attention sink's share where heads have sinks (GPT-OSS; its own
    # spec, test_gpt_oss.py, proves the share exact).
    sinks = any(param_name.endswith(".sinks") for param_name, _ in model.named_parameters())
    for weights, share in zip(trace.attentions, trace.sink_shares, strict=True):
        if sinks:
            assert bool(((share > 0) & (share < 1)).all())
        else:
            torch.testing.assert_close(share, torch.zeros_like(share), **EXACT)
        assert bool((weights[..., future] == 0).all())  # no query sees a later position


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_refused_before_any_work(name):
    model = tiny_model(name, 0)
    with pytest.raises(ValueError, match="idx"):
        model(torch.tensor([[64]]))
    with pytest.raises(ValueError, match="idx"):
        model(torch.tensor([[-1]]))
    with pytest.raises(TypeError, match="idx"):
        model(torch.tensor([[1.0]]))
    cache = model.new_kv_cache(2)
    with pytest.raises(ValueError, match="batch"):
        model(torch.tensor([[1]]), kv_cache=cache)
    assert cache.length == 0  # nothing stored by the refused call


@pytest.mark.parametrize("name", NAMES)
def test_the_model_computes_in_its_parameters_dtype_and_builds_on_meta(name):
    ids = torch.tensor([[1, 2, 3, 4]])
    for dtype in (F64, torch.bfloat16):
        model = tiny_model(name, 1, dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {dtype}
        with torch.no_grad():
            logits = model(ids)
        assert logits.dtype == dtype and bool(logits.isfinite().all())
    family = FAMILIES[name]
    with torch.device("meta"):
        meta = family.model_class(model.cfg)
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILIES[n].layout is not None])
def test_saved_weights_load_into_transformers_and_come_back_unchanged(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model(name, 2)
    directory = save_pretrained(model, tmp_path / name)
    assert json.loads((directory / "config.json").read_text())["model_type"] \
        == FAMILIES[name].layout.model_type
    experts = any(".experts." in n for n, _ in model.named_parameters())
    eager = {"experts_implementation": "eager"} if experts else {}  # its fused kernel: no float64
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=F64,
                                                               **eager).eval()
    ids = torch.randint(0, 64, (2, window_of(model.cfg) + 6), generator=generator(3))
    with torch.no_grad():
        ours = model(ids)
        expected = theirs(ids).logits
    # transformers keeps float32 islands (RoPE frequencies, routers): a float32 bound here; each
    # family's own file widens them (spec/helpers/hf_exact.py) and asks for ~1e-10.
    torch.testing.assert_close(expected, ours, rtol=1e-5, atol=1e-5 * ours.abs().max().item())
    dtype = FAMILIES[name].layout.dtype or F64  # the layout's dtype, else the file's
    if dtype == F64:
        back = from_pretrained(directory)
    else:  # never silently
        with pytest.warns(UserWarning, match=f"converted .* weights from torch.float64 to {dtype}"):
            back = from_pretrained(directory)
    assert type(back.cfg) is type(model.cfg) and not back.training
    assert back.cfg == dataclasses.replace(model.cfg, attn_kernel=back.cfg.attn_kernel)
    with torch.no_grad():
        assert torch.equal(back(ids), model.to(dtype)(ids))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_the_cli_trains_generates_from_and_resumes_the_nano_preset(name, tmp_path, capsys):
    from safetensors.torch import load_file

    from gpt_components.cli import main
    from gpt_components.machinery.resources import load_text

    preset = smallest_preset(FAMILIES[name])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(load_text("the-verdict.txt")[:3000], encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(run), "--preset", preset,
                 "--context-length", "16", "--batch-size", "2", "--steps", "3",
                 "--checkpoint-interval", "2", "--eval-interval", "3", "--eval-iters", "1",
                 "--sample-tokens", "3", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["family"] == name
    assert config_from_dict(saved["model"]) == preset_config(
        preset, vocab_size=50257, context_length=16, drop_rate=0.1)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("I had")
    # Resume from step 2 (as after a crash): step 3 comes out exactly as without the crash.
    final = load_file(run / "checkpoints" / "step-00000003" / "model.safetensors")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 2,
                                                                  "path": "step-00000002"}))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    again = load_file(run / "checkpoints" / "step-00000003" / "model.safetensors")
    assert final.keys() == again.keys()
    assert all(torch.equal(final[k], again[k]) for k in final)


def _imports(path: Path, package: Path) -> set[str]:
    """The ``gpt_components`` modules one file imports, anywhere in it (functions included)."""
    name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
    if name.endswith(".__init__"):
        name = name.removesuffix(".__init__")
        here = name
    else:
        here = name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level \
                else node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("gpt_components")}


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    package = Path(gpt_components.__file__).parent
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: {m for m in _imports(path, package) if m in modules and m != name}
             for name, path in modules.items()}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    cycles = sorted((a, b) for a, targets in graph.items() for b in targets
                    if a < b and a in graph.get(b, ()) and not {a, b} & packages)
    assert cycles == []


def test_a_family_name_is_declared_once():
    family = FAMILIES["llama"]
    with pytest.raises(ValueError, match="family 'llama' is already declared by"):
        Family(name="llama", config_class=mistral_style.MistralStyleConfig,
               model_class=family.model_class, presets={})
    with pytest.raises(TypeError, match=r"presets\['x'\] must be a MistralStyleConfig"):
        Family(name="another", config_class=mistral_style.MistralStyleConfig,
               model_class=family.model_class, presets={"x": preset_config("llama3-nano")})
    assert "another" not in FAMILIES


def test_the_guide_lists_the_single_file_family_as_it_is():
    guide = Path(__file__).resolve().parent.parent / "docs" / "adding-a-family.md"
    listing = re.search(r"```py\n(.*?)```", guide.read_text(encoding="utf-8"), flags=re.S)
    assert listing is not None
    assert listing.group(1) == Path(mistral_style.__file__).read_text(encoding="utf-8")


def test_modern_exports_every_module_without_a_list():
    modern = importlib.import_module("gpt_components.modern")
    for module in ("llama", "qwen3", "gemma3", "qwen3_moe", "deepseek_v3", "chat", "moe"):
        names = importlib.import_module(f"gpt_components.modern.{module}").__all__
        assert set(names) <= set(modern.__all__)
        assert all(getattr(modern, n) is getattr(gpt_components, n) for n in names)


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILIES[n].model_class is not DecoderModel
                                  and issubclass(FAMILIES[n].model_class, DecoderModel)])
def test_a_family_with_its_own_model_class_refuses_the_plain_decoder(name):
    # Gemma 4 and OLMo 3 extend DecoderModel: a plain DecoderModel of their config would build
    # a different model without a word (no shared caches, no per-layer inputs, other norms).
    cfg = preset_config(smallest_preset(FAMILIES[name]), vocab_size=64)
    with pytest.raises(TypeError, match=rf"^cfg is a {type(cfg).__name__}, whose model is "
                                        rf"{FAMILIES[name].model_class.__name__}: build it with"):
        DecoderModel(cfg)
    assert type(build_model(cfg)) is FAMILIES[name].model_class


@pytest.mark.parametrize("name", NAMES)
def test_lora_wraps_every_family_and_a_nonzero_update_is_its_low_rank_sum(name):
    # Appendix E on every family: with B at zero the wrapped model computes exactly the base
    # model; with B drawn, each wrapped layer adds (alpha / rank) x A B, and only the adapters
    # receive gradients.
    import copy

    from gpt_components.finetune.lora import LinearWithLoRA, replace_linear_with_lora

    cfg = preset_config(smallest_preset(FAMILIES[name]), vocab_size=64, drop_rate=0.0)
    base = build_model(cfg).double().eval()
    ids = torch.randint(0, 64, (2, 7), generator=generator(0))
    with torch.no_grad():
        expected = base(ids)
    wrapped = replace_linear_with_lora(copy.deepcopy(base), rank=2, alpha=4.0,
                                       generator=generator(1)).double().eval()
    layers = [m for m in wrapped.modules() if isinstance(m, LinearWithLoRA)]
    assert layers
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids), expected, rtol=0, atol=0)
        for layer in layers:
            layer.lora.B.normal_(0, 0.5, generator=generator(2))
        for layer in layers:  # each layer: its base plus the scaled low-rank product
            x = torch.randn(3, layer.in_features, generator=generator(3), dtype=torch.float64)
            torch.testing.assert_close(layer(x), layer.linear(x) + 2.0 * (x @ layer.lora.A)
                                       @ layer.lora.B, rtol=1e-12, atol=1e-12)
    wrapped(ids).sum().backward()
    trained = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    assert trained and all(".lora." in n for n in trained)
