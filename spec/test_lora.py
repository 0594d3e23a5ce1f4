"""LoRA (appendix E): adapters start as the identity change, train alone, and merge exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from gpt_components.finetune.classification import make_classifier
from gpt_components.finetune.lora import (
    LinearWithLoRA,
    LoRALayer,
    count_trainable_parameters,
    load_lora,
    lora_state_dict,
    merge_lora,
    replace_linear_with_lora,
    save_lora,
)
from gpt_components.model import GPTConfig, GPTModel
from spec.strategies import generator, seeds

pytestmark = pytest.mark.appendix_e

dims = st.integers(min_value=1, max_value=9)
ranks = st.integers(min_value=1, max_value=6)
alphas = st.floats(min_value=-16.0, max_value=16.0, allow_nan=False)


def _mlp(widths: list[int], bias: bool, seed: int) -> nn.Module:
    """A small float64 stack of linear layers with GELUs, its weights drawn from ``seed``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(a, b, bias=bias, dtype=torch.float64))
    model = nn.Sequential(*layers)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def _randomise_adapters(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALayer):
                m.B.copy_(torch.randn(m.B.shape, generator=g, dtype=m.B.dtype))


mlps = st.tuples(st.lists(dims, min_size=2, max_size=4), st.booleans(), seeds)


@given(mlps, ranks, alphas, seeds)
def test_adapted_model_computes_exactly_the_base_function_at_initialisation(mlp, rank, alpha, seed):
    widths, bias, weight_seed = mlp
    base = _mlp(widths, bias, weight_seed)
    x = torch.randn(3, widths[0], generator=generator(seed), dtype=torch.float64)
    expected = base(x)
    adapted = replace_linear_with_lora(base, rank, alpha, generator=generator(seed + 1))
    assert torch.equal(adapted(x), expected)


@given(dims, dims, ranks, alphas, seeds)
def test_lora_layer_adds_alpha_over_rank_times_x_a_b_to_the_linear_output(in_dim, out_dim, rank,
                                                                          alpha, seed):
    g = generator(seed)
    linear = nn.Linear(in_dim, out_dim, dtype=torch.float64)
    layer = LinearWithLoRA(linear, rank, alpha, generator=g)
    _randomise_adapters(layer, g)
    x = torch.randn(2, 5, in_dim, generator=g, dtype=torch.float64)
    W, b = linear.weight.detach(), linear.bias.detach()
    A, B = layer.lora.A.detach(), layer.lora.B.detach()
    reference = torch.einsum("bti,oi->bto", x, W) + b + (alpha / rank) * torch.einsum(
        "bti,ir,ro->bto", x, A, B
    )
    torch.testing.assert_close(layer(x), reference)


@settings(max_examples=20)
@given(dims, dims, ranks, st.floats(0.5, 64.0), st.booleans(), seeds)
def test_lora_layer_equals_peft_lora_with_the_same_rank_alpha_and_matrices(
        in_dim, out_dim, rank, alpha, bias, seed):
    # PEFT's LoraConfig(r, lora_alpha) scales by lora_alpha / r, as the LoRA paper does.
    peft = pytest.importorskip("peft")
    g = generator(seed)
    linear = nn.Linear(in_dim, out_dim, bias=bias, dtype=torch.float64)
    ours = LinearWithLoRA(copy.deepcopy(linear), rank, alpha, generator=g)
    _randomise_adapters(ours, g)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["0"])
    theirs = peft.get_peft_model(nn.Sequential(linear), config).double()
    adapted = theirs.base_model.model[0]
    with torch.no_grad():
        adapted.lora_A["default"].weight.copy_(ours.lora.A.T)  # peft: A is Linear(in, r)
        adapted.lora_B["default"].weight.copy_(ours.lora.B.T)  # peft: B is Linear(r, out)
    x = torch.randn(3, in_dim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.merged().weight, adapted.get_delta_weight("default")
                               + linear.weight, rtol=1e-12, atol=1e-12)


@given(mlps, ranks, alphas)
def test_only_adapter_parameters_are_trainable(mlp, rank, alpha):
    widths, bias, seed = mlp
    model = replace_linear_with_lora(_mlp(widths, bias, seed), rank, alpha)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    adapters = {name for name in dict(model.named_parameters()) if name.split(".")[-2] == "lora"}
    assert trainable == adapters
    expected = sum(rank * (a + b) for a, b in zip(widths, widths[1:], strict=False))
    assert count_trainable_parameters(model) == expected


@given(mlps, ranks, alphas, seeds)
def test_gradients_reach_only_the_adapters(mlp, rank, alpha, seed):
    widths, bias, weight_seed = mlp
    g = generator(seed)
    model = replace_linear_with_lora(_mlp(widths, bias, weight_seed), rank, alpha, generator=g)
    model(torch.randn(4, widths[0], generator=g, dtype=torch.float64)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (".lora." in f".{name}"), name


@given(mlps, ranks, alphas, seeds)
def test_merged_model_gives_the_same_outputs_as_the_unmerged_one(mlp, rank, alpha, seed):
    widths, bias, weight_seed = mlp
    g = generator(seed)
    adapted = replace_linear_with_lora(_mlp(widths, bias, weight_seed), rank, alpha, generator=g)
    _randomise_adapters(adapted, g)
    x = torch.randn(3, widths[0], generator=g, dtype=torch.float64)
    unmerged = adapted(x)
    merged = merge_lora(copy.deepcopy(adapted))
    assert not any(isinstance(m, (LoRALayer, LinearWithLoRA)) for m in merged.modules())
    assert all(type(m) is nn.Linear for m in merged if isinstance(m, nn.Linear))
    torch.testing.assert_close(merged(x), unmerged, rtol=1e-9, atol=1e-9)


@given(mlps, ranks, alphas, seeds)
def test_saved_adapters_reload_into_a_fresh_base_model(tmp_path_factory, mlp, rank, alpha, seed):
    widths, bias, weight_seed = mlp
    g = generator(seed)
    adapted = replace_linear_with_lora(_mlp(widths, bias, weight_seed), rank, alpha, generator=g)
    _randomise_adapters(adapted, g)
    path = tmp_path_factory.mktemp("lora") / "adapters.safetensors"
    save_lora(adapted, path)
    reloaded = load_lora(_mlp(widths, bias, weight_seed), path)
    x = torch.randn(3, widths[0], generator=g, dtype=torch.float64)
    assert torch.equal(reloaded(x), adapted(x))
    assert set(lora_state_dict(reloaded)) == set(lora_state_dict(adapted))
    assert count_trainable_parameters(reloaded) == count_trainable_parameters(adapted)


def test_adapter_file_holds_only_the_adapters(tmp_path):
    from safetensors.torch import load_file

    model = replace_linear_with_lora(_mlp([6, 7, 3], True, 0), rank=2, alpha=1.0)
    save_lora(model, tmp_path / "a.safetensors")
    stored = load_file(tmp_path / "a.safetensors")
    assert sorted(stored) == ["0.lora.A", "0.lora.B", "2.lora.A", "2.lora.B"]


def test_loading_adapters_of_another_shape_is_refused(tmp_path):
    save_lora(replace_linear_with_lora(_mlp([6, 7, 3], True, 0), 2, 1.0), tmp_path / "a.st")
    with pytest.raises(ValueError, match="path"):
        load_lora(_mlp([6, 8, 3], True, 0), tmp_path / "a.st")
    with pytest.raises(FileNotFoundError, match="path"):
        load_lora(_mlp([6, 7, 3], True, 0), tmp_path / "missing.st")


@given(st.integers(max_value=0))
def test_rank_below_one_is_rejected(rank):
    with pytest.raises(ValueError, match=f"^rank must be an int >= 1, got {rank}$") as caught:
        LoRALayer(4, 4, rank, 1.0)
    assert caught.value.parameter == "rank"
    with pytest.raises(ValueError, match="rank"):
        replace_linear_with_lora(_mlp([3, 3], True, 0), rank, 1.0)


@pytest.mark.parametrize("rank", [2.0, "4", None, True])
def test_a_rank_that_is_not_an_int_is_rejected(rank):
    with pytest.raises(TypeError, match="rank"):
        LoRALayer(4, 4, rank, 1.0)


def test_alpha_must_be_a_finite_number():
    with pytest.raises(ValueError, match="alpha"):  # the right type, a wrong value
        LoRALayer(4, 4, 2, float("nan"))
    with pytest.raises(TypeError, match="alpha"):
        LoRALayer(4, 4, 2, "2")


def _tiny_gpt(seed: int, n_layers: int, qkv_bias: bool) -> GPTModel:
    cfg = GPTConfig(vocab_size=32, context_length=8, emb_dim=8, n_heads=2, n_layers=n_layers,
                    drop_rate=0.0, qkv_bias=qkv_bias)
    with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG: isolate it
        model = GPTModel(cfg).double()
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


@given(seeds, st.integers(1, 3), st.booleans(), ranks, alphas)
def test_a_lora_gpt_starts_as_the_base_gpt_and_merges_back_exactly(seed, n_layers, bias, rank,
                                                                   alpha):
    g = generator(seed)
    base = _tiny_gpt(seed, n_layers, bias)
    strides = {name: p.stride() for name, p in base.named_parameters()}
    idx = torch.randint(0, 32, (2, 8), generator=g)
    expected = base(idx)
    adapted = replace_linear_with_lora(base, rank, alpha, generator=g)
    assert torch.equal(adapted(idx), expected)
    assert all(p.requires_grad == (".lora." in name) for name, p in adapted.named_parameters())
    _randomise_adapters(adapted, g)
    moved = adapted(idx)
    merged = merge_lora(adapted)
    torch.testing.assert_close(merged(idx), moved, rtol=1e-9, atol=1e-9)
    # Merged weights keep the memory order GPTModel chose for decoding speed.
    assert {name: p.stride() for name, p in merged.named_parameters()} == strides


def _closed_form(cfg: GPTConfig, num_classes: int, rank: int) -> int:
    """rank * (in + out) for every linear layer: per block W_query, W_key, W_value and out_proj
    (d -> d each) and the feed-forward pair (d -> 4d -> d), then the class head (d -> C)."""
    d = cfg.emb_dim
    per_block = 4 * (d + d) + (d + 4 * d) + (4 * d + d)
    return rank * (cfg.n_layers * per_block + d + num_classes)


heads = st.integers(1, 4)


@given(heads, st.integers(1, 16), st.integers(1, 3), st.integers(1, 5), ranks, st.booleans())
@example(n_heads=12, head_dim=64, n_layers=12, num_classes=2, rank=16, qkv_bias=True)
def test_trainable_parameters_match_the_closed_form(n_heads, head_dim, n_layers, num_classes,
                                                    rank, qkv_bias):
    cfg = GPTConfig(vocab_size=64, context_length=16, emb_dim=n_heads * head_dim,
                    n_heads=n_heads, n_layers=n_layers, qkv_bias=qkv_bias)
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = make_classifier(GPTModel(cfg), num_classes)
        replace_linear_with_lora(model, rank, alpha=16)
    assert count_trainable_parameters(model) == _closed_form(cfg, num_classes, rank)


def test_rank_16_on_gpt2_small_with_a_2_class_head_trains_2_666_528_parameters():
    with torch.device("meta"):
        model = make_classifier(GPTModel(GPTConfig.from_name("gpt2-small")), num_classes=2)
        replace_linear_with_lora(model, rank=16, alpha=16)
    assert count_trainable_parameters(model) == 2_666_528  # the book's appendix E figure
