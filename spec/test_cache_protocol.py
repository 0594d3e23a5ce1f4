"""Spec of the one cache protocol (``gpt_components.kv_cache``) and the one model interface
(``gpt_components.machinery.language_model``) that every family shares.

Every cache kind counts positions the same way and refuses what does not fit before writing; a
new kind is a ``LayerCache`` with its own ``_write`` (here a toy that grows by concatenation, as
transformers' ``DynamicCache`` does), and a model that makes it decodes as without a cache.
Every family refuses bad ids and a cache that is not its own with the same errors, naming the
argument, before any work.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.kv_cache import CacheStack, KVCache, LayerCache, LayerKVCache
from gpt_components.machinery.checks import ArgumentError
from gpt_components.machinery.language_model import LanguageModel
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.modern import (
    DecoderKVCache,
    DecoderModel,
    DeepseekV3Config,
    Gemma3Config,
    LlamaConfig,
    Qwen3Config,
)
from gpt_components.modern.latent_attention import LatentKVCache
from gpt_components.modern.sliding_window import WindowLayerCache
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch05

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}
VOCAB, CONTEXT = 40, 12


class ConcatKVCache(LayerCache):
    """A toy cache kind: keys and values that grow by concatenation instead of preallocated.

    All it writes is ``_write``; the counting, the room and the batch come from the protocol.
    """

    def __init__(self, batch_size, max_tokens, n_kv_heads, head_dim, *, device=None,
                 dtype=None):
        super().__init__(batch_size, max_tokens)
        empty = torch.zeros(batch_size, n_kv_heads, 0, head_dim, device=device, dtype=dtype)
        self.register_buffer("keys", empty, persistent=False)
        self.register_buffer("values", empty.clone(), persistent=False)

    def _write(self, k, v, start):
        self.keys = torch.cat([self.keys[:, :, :start], k], dim=2)  # forget what reset dropped
        self.values = torch.cat([self.values[:, :, :start], v], dim=2)
        return self.keys, self.values


class ConcatCacheModel(DecoderModel):
    """A ``DecoderModel`` whose ``new_kv_cache`` makes the toy kind: the only change needed."""

    def _new_cache(self, batch_size, max_tokens, device, dtype):
        layers = [ConcatKVCache(batch_size, max_tokens, block.att.n_kv_heads, block.att.head_dim,
                                device=device, dtype=dtype) for block in self.trf_blocks]
        return DecoderKVCache(layers, batch_size, max_tokens)


SMALL = {"vocab_size": VOCAB, "context_length": CONTEXT}
FAMILIES = {
    "gpt2": lambda: GPTModel(GPTConfig(**SMALL, emb_dim=16, n_heads=2, n_layers=2,
                                       drop_rate=0.0)),
    "gpt2-1-layer": lambda: GPTModel(GPTConfig(**SMALL, emb_dim=16, n_heads=2, n_layers=1,
                                               drop_rate=0.0)),
    "gpt2-4-heads": lambda: GPTModel(GPTConfig(**SMALL, emb_dim=16, n_heads=4, n_layers=2,
                                               drop_rate=0.0)),
    "llama": lambda: DecoderModel(LlamaConfig.from_name("llama3-nano", **SMALL)),
    "qwen3": lambda: DecoderModel(Qwen3Config.from_name("qwen3-nano", **SMALL)),
    "qwen3-2-layers": lambda: DecoderModel(Qwen3Config.from_name("qwen3-nano", **SMALL,
                                                                 n_layers=2)),
    "gemma3": lambda: DecoderModel(Gemma3Config.from_name("gemma3-nano", **SMALL,
                                                          sliding_window=3)),
    "gemma3-window-2": lambda: DecoderModel(Gemma3Config.from_name("gemma3-nano", **SMALL,
                                                                   sliding_window=2)),
    "deepseek_v3": lambda: DecoderModel(DeepseekV3Config.from_name("deepseek-v3-nano", **SMALL)),
}
_BUILT: dict[str, LanguageModel] = {}


def family(name: str) -> LanguageModel:
    """One seeded model per family, built once (the properties only read it)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = FAMILIES[name]().eval()
    return _BUILT[name]


names = st.sampled_from(sorted(FAMILIES))


def ids(seed, batch, tokens):
    return torch.randint(0, VOCAB, (batch, tokens), generator=generator(seed))


# -- the protocol ----------------------------------------------------------------------------

LAYER_KINDS = {
    "LayerKVCache": lambda m: LayerKVCache(2, 1, 3, m, dtype=F64),
    "WindowLayerCache": lambda m: WindowLayerCache(2, 1, 3, 2, m, dtype=F64),
    "LatentKVCache": lambda m: LatentKVCache(2, m, 3, 2, dtype=F64),
    "ConcatKVCache": lambda m: ConcatKVCache(2, m, 1, 3, dtype=F64),
}


def entries(kind, tokens, seed):
    """New positions' (k, v) as ``kind`` takes them: positions on its ``token_dim``."""
    g = generator(seed)
    if kind == "LatentKVCache":
        return (torch.randn(2, tokens, 3, generator=g, dtype=F64),
                torch.randn(2, tokens, 2, generator=g, dtype=F64))
    return (torch.randn(2, 1, tokens, 3, generator=g, dtype=F64),
            torch.randn(2, 1, tokens, 3, generator=g, dtype=F64))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(LAYER_KINDS)), max_tokens=st.integers(1, 8),
       chunks=st.lists(st.integers(1, 4), max_size=6), seed=seeds)
def test_every_cache_kind_counts_positions_and_refuses_what_does_not_fit_unchanged(
        kind, max_tokens, chunks, seed):
    cache = LAYER_KINDS[kind](max_tokens)
    assert isinstance(cache, LayerCache)
    held = 0
    for size in chunks:
        k, v = entries(kind, size, seed + held)
        if size > cache.remaining:
            with pytest.raises(ValueError, match=rf"holds {held} of max_tokens={max_tokens} "
                                                 rf"positions; {size} more do not fit") as error:
                cache.store(k, v)
            assert error.value.parameter == "k"
            with pytest.raises(ValueError) as error:
                cache.advance(size)
            assert error.value.parameter == "num_tokens"
        else:
            cache.store(k, v)
            cache.advance(size)
            held += size
        assert (cache.length, cache.remaining) == (held, max_tokens - held)
    cache.reset()
    assert (cache.length, cache.remaining) == (0, max_tokens)


@settings(max_examples=10, deadline=None)
@given(seed=seeds, first=st.integers(1, CONTEXT), batch=st.integers(1, 2), data=st.data())
def test_a_new_cache_kind_is_one_write_method_and_decodes_as_without_a_cache(
        seed, first, batch, data):
    torch.manual_seed(seed % 1000)
    model = ConcatCacheModel(Qwen3Config.from_name("qwen3-nano", **SMALL)).to(F64).eval()
    tokens = data.draw(st.integers(first, CONTEXT), label="tokens")
    idx = ids(seed, batch, tokens)
    cache = model.new_kv_cache(batch)
    assert all(isinstance(layer, ConcatKVCache) for layer in cache.layers)
    with torch.no_grad():
        pieces = [model(idx[:, :first], kv_cache=cache)]
        pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(first, tokens)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx), **EXACT)
    assert cache.length == tokens and cache.layers[0].keys.shape[2] == tokens
    # The toy kind is this model's own; a plain Qwen3 of the same sizes refuses it by kind.
    with pytest.raises(ValueError, match=r"^kv_cache was not made for this model: its layer 0 "
                                         r"holds \('ConcatKVCache'"):
        DecoderModel(model.cfg)(idx[:, :1], kv_cache=model.new_kv_cache(batch))


def test_a_cache_several_layers_share_is_counted_once():
    # Gemma 4 shares one layer's keys and values with later layers: one object, listed twice.
    shared = LayerKVCache(1, 1, 2, 4)
    stack = CacheStack([shared, LayerKVCache(1, 1, 2, 4), shared], batch_size=1, max_tokens=4)
    shared.store(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    stack.advance(3)
    assert shared.length == stack.length == stack.layers[1].length == 3
    assert stack.memory_bytes() == 2 * (2 * 1 * 1 * 4 * 2 * 4)  # two distinct caches' buffers
    stack.reset()
    assert shared.length == stack.length == 0


def test_a_stack_holds_layer_caches_only():
    with pytest.raises(TypeError, match=r"^layers must be a LayerCache per layer, got str$"):
        CacheStack(["keys"], batch_size=1, max_tokens=2)
    with pytest.raises(ValueError, match=r"^layers must hold one cache per layer, got none$"):
        CacheStack([], batch_size=1, max_tokens=2)


# -- the model interface ---------------------------------------------------------------------

def refused_before_any_work(model, call, error_class, parameter):
    """``call()`` raises ``error_class`` naming ``parameter`` without running the embedding."""
    runs = []
    hook = model.tok_emb.register_forward_hook(lambda *args: runs.append(1))
    try:
        with pytest.raises(error_class) as error:
            call()
    finally:
        hook.remove()
    assert isinstance(error.value, ArgumentError) and error.value.parameter == parameter
    assert runs == []
    return error.value


@settings(max_examples=30, deadline=None)
@given(ours=names, theirs=names, seed=seeds)
def test_a_cache_from_another_model_is_refused_naming_kv_cache_before_any_work(
        ours, theirs, seed):
    model, other = family(ours), family(theirs)
    cache = other.new_kv_cache(1)
    idx = ids(seed, 1, 2)
    if cache.layout == model.new_kv_cache(1).layout:
        with torch.no_grad():
            model(idx, kv_cache=cache)  # interchangeable: the same kinds and shapes
        assert cache.length == 2
        return
    refused_before_any_work(model, lambda: model(idx, kv_cache=cache), ValueError, "kv_cache")
    assert cache.length == 0 and all(layer.length == 0 for layer in cache.layers)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_refuses_bad_ids_and_caches_alike(name):
    model = family(name)
    good = torch.tensor([[1, 2]])
    for bad, error in (
        (good.float(), TypeError),
        (good.bool(), TypeError),
        (good.to("meta"), ValueError),  # another device
        (torch.tensor([[1, VOCAB]]), ValueError),
        (torch.ones(1, CONTEXT + 1, dtype=torch.long), ValueError),
    ):
        refused_before_any_work(model, lambda bad=bad: model(bad), error, "idx")
    for bad, error in (
        ("cache", TypeError),
        (model.new_kv_cache(1).layers[0], TypeError),  # one layer's cache, not the model's
        (model.new_kv_cache(2), ValueError),  # made for another batch size
    ):
        refused_before_any_work(model, lambda bad=bad: model(good, kv_cache=bad), error,
                                "kv_cache")
    other_dtype = model.new_kv_cache(1)
    other_dtype.to(F64)
    refused_before_any_work(model, lambda: model(good, kv_cache=other_dtype), ValueError,
                            "kv_cache")
    full = model.new_kv_cache(1, max_tokens=2)
    with torch.no_grad():
        model(good, kv_cache=full)
    with pytest.raises(ValueError, match=r"^Sequence length 3 exceeds the cache's 2 tokens"):
        model(good[:, :1], kv_cache=full)
    for bad, error, parameter in (
        (True, TypeError, "batch_size"), (0, ValueError, "batch_size"),
        (1.0, TypeError, "batch_size"),
    ):
        with pytest.raises(error) as raised:
            model.new_kv_cache(bad)
        assert raised.value.parameter == parameter
    for bad, error in ((True, TypeError), (0, ValueError), (CONTEXT + 1, ValueError),
                       (2.0, TypeError)):
        with pytest.raises(error) as raised:
            model.new_kv_cache(1, max_tokens=bad)
        assert raised.value.parameter == "max_tokens"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_a_language_model_whose_forward_is_the_head_of_its_hidden_states(name):
    model = family(name)
    assert isinstance(model, LanguageModel)
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model.out_head(model.hidden_states(idx)))
        torch.testing.assert_close(model.trace(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
    cache = model.new_kv_cache(1, max_tokens=5)
    assert isinstance(cache, CacheStack) and cache.max_tokens == 5
    assert len(cache.layers) == len(model.trf_blocks)
    assert isinstance(family("gpt2").new_kv_cache(1), KVCache)
    assert family("gpt2").auxiliary_loss() is None  # a dense model adds no training loss
