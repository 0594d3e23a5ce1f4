"""The paged KV cache (serving): pages change where keys live, never what attention computes.

- a forward pass over several sequences of different lengths at once, through their block
  tables, in any chunks, gives every sequence the logits of its own forward pass without a
  cache (float64, every family: GPT-2's learned positions, RoPE, Gemma 3's windows, the
  mixtures, DeepSeek-V3's latents);
- the textbook gather (block by block) and the fast gather (every slot at once) read the same
  keys and values, exactly;
- the block allocator never leaks nor double-frees, whatever the interleaving of allocations,
  releases, prefix registrations and cache hits: its reference counts match a plain count kept
  beside it, and once everything is released every block is free;
- the prefix keys name whole prefixes: equal blocks after different prefixes differ;
- a hybrid's recurrent layers (Qwen3-Next, Qwen3.5) keep one state slot per row: rows fed
  together, each from its own slot, give each sequence its own logits (the first property,
  whose default tier draws one tiny hybrid case); rows of unequal counts are refused, since
  padding would write into a state.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spec.families
from gpt_components.machinery.registry import FAMILIES
from gpt_components.serving.paged_cache import BlockPool, PagedKVCache, block_hashes
from spec.strategies import generator, seeds

for _info in pkgutil.iter_modules(spec.families.__path__):  # the spec's own families too
    importlib.import_module(f"spec.families.{_info.name}")

pytestmark = pytest.mark.serving
F64 = torch.float64

#: The families every default run serves: learned positions, RoPE, windows with their own RoPE
#: table, latent attention. The slow tier adds every other registered family.
DEFAULT_FAMILIES = ["gpt2", "llama", "gemma3", "deepseek_v3"]
OTHER_FAMILIES = sorted(set(FAMILIES) - set(DEFAULT_FAMILIES))


def family_params() -> list:
    return DEFAULT_FAMILIES + [pytest.param(name, marks=pytest.mark.slow)
                               for name in OTHER_FAMILIES]


def tiny_model(name: str, seed: int, *, n_layers: int | None = None, dtype=F64):
    """The family's smallest preset (vocabulary 64, any window 4 wide), weights drawn, eval."""
    family = FAMILIES[name]
    preset = min(family.presets, key=lambda p: family.presets[p].emb_dim
                 * family.presets[p].n_layers)
    cfg = family.config_class.from_name(preset, vocab_size=64, drop_rate=0.0)
    if getattr(cfg, "sliding_window", None):
        cfg = dataclasses.replace(cfg, sliding_window=4)
    if n_layers is not None:  # (a family that names each layer's kind names them anew)
        relisted = {"layer_types": None} if hasattr(cfg, "layer_types") else {}
        if getattr(cfg, "kv_shared_layers", 0):  # no later layers left to share a cache
            relisted["kv_shared_layers"] = 0
        cfg = dataclasses.replace(cfg, n_layers=n_layers, **relisted)
    model = family.model_class(cfg).to(dtype)
    g = generator(seed)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64) * 0.3
            p.copy_(noise + 1 if "norm" in name_ and "gemma" not in name else noise)
    return model.eval()


def run_paged(model, sequences: list[torch.Tensor], block_size: int, cuts: list[int],
              gather: str, order: list[int] | None = None,
              packed: bool = False) -> list[torch.Tensor]:
    """Each sequence's logits, computed together through a paged cache in chunks: the first
    chunk of each ends at its cut, the second is the rest (a sequence may sit one out).

    The blocks are handed out in ``order`` (default: 0, 1, ...: each sequence's blocks follow
    one another, and attention reads them in place; a shuffled order scatters them, and they
    are gathered). ``packed``: where the model allows it, a pass's rows go in as one row."""
    order = list(range(64)) if order is None else order
    cache = PagedKVCache(model, 64, block_size, gather=gather)
    if packed:
        cache.probe(model)
    blocks = iter(order)
    tables = [[next(blocks) for _ in range(-(-len(s) // block_size))] for s in sequences]
    logits: list[list[torch.Tensor]] = [[] for _ in sequences]
    done = [0] * len(sequences)
    for ends in (cuts, [len(s) for s in sequences]):
        rows = [i for i, s in enumerate(sequences) if ends[i] > done[i]]
        if not rows:
            continue
        # A recurrent layer's rows feed equal counts (padding would reach its state): one
        # forward per count then, each row in its own state slot.
        groups = ([[i for i in rows if ends[i] - done[i] == n]
                   for n in sorted({ends[i] - done[i] for i in rows})]
                  if cache.stateful else [rows])
        for group in groups:
            counts = [ends[i] - done[i] for i in group]
            pack = packed and cache.packable
            if pack:  # every row's tokens one after the other, in one row
                idx = torch.cat([sequences[i][done[i]:ends[i]] for i in group])[None]
            else:
                idx = torch.zeros(len(group), max(counts), dtype=torch.long)
                for r, i in enumerate(group):
                    idx[r, :counts[r]] = sequences[i][done[i]:ends[i]]
            cache.prepare([tables[i] for i in group], [done[i] for i in group], counts, group,
                          packed=pack)
            out = model(idx, kv_cache=cache)  # (rows, T, vocab), or (1, sum(counts), vocab)
            for r, i in enumerate(group):
                at = sum(counts[:r])
                logits[i].append(out[0, at:at + counts[r]] if pack else out[r, :counts[r]])
                done[i] = ends[i]
    return [torch.cat(parts) for parts in logits]


@st.composite
def batches(draw):
    lengths = draw(st.lists(st.integers(1, 14), min_size=1, max_size=4))
    cuts = [draw(st.integers(0, n)) for n in lengths]
    return lengths, cuts, draw(st.integers(1, 5)), draw(seeds)


@pytest.mark.parametrize("name", family_params())
@settings(max_examples=8, deadline=None)
@given(batch=batches(), gather=st.sampled_from(["rows", "fast", "textbook"]),
       order=st.none() | st.permutations(range(64)), packed=st.booleans())
def test_paged_attention_in_chunks_equals_each_sequence_alone(name, batch, gather, order,
                                                              packed):
    lengths, cuts, block_size, seed = batch
    model = tiny_model(name, seed % 1000)
    g = generator(seed)
    sequences = [torch.randint(0, 64, (n,), generator=g) for n in lengths]
    paged = run_paged(model, sequences, block_size, cuts, gather, order, packed)
    with torch.no_grad():
        for sequence, logits in zip(sequences, paged, strict=True):
            alone = model(sequence[None])[0]  # the reference: one sequence, no cache
            torch.testing.assert_close(logits, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gpt_oss", "gemma4_text"])
@settings(max_examples=4, deadline=None)
@given(batch=batches(), order=st.none() | st.permutations(range(64)), packed=st.booleans())
def test_sinks_and_shared_caches_attended_by_the_pages_equal_each_sequence_alone(
        name, batch, order, packed):
    # GPT-OSS hands the paged cache its sink logits (the cache's own softmax takes them in);
    # Gemma 4's last layers read an earlier layer's pages through the same cache.
    lengths, cuts, block_size, seed = batch
    model = tiny_model(name, seed % 1000)
    g = generator(seed)
    sequences = [torch.randint(0, 64, (n,), generator=g) for n in lengths]
    paged = run_paged(model, sequences, block_size, cuts, "rows", order, packed)
    with torch.no_grad():
        for sequence, logits in zip(sequences, paged, strict=True):
            torch.testing.assert_close(logits, model(sequence[None])[0], rtol=1e-10,
                                       atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(batch=batches())
def test_the_textbook_and_fast_gathers_read_the_same_keys(batch):
    lengths, cuts, block_size, seed = batch
    model = tiny_model("llama", 0)
    g = generator(seed)
    sequences = [torch.randint(0, 64, (n,), generator=g) for n in lengths]
    fast = run_paged(model, sequences, block_size, cuts, "fast")
    textbook = run_paged(model, sequences, block_size, cuts, "textbook")
    for a, b in zip(fast, textbook, strict=True):
        assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["allocate", "release", "register", "hit"]),
                              st.integers(0, 50)), max_size=60),
       num_blocks=st.integers(1, 6))
def test_the_allocator_never_leaks_nor_double_frees(ops, num_blocks):
    pool = BlockPool(num_blocks, block_size=2)
    held: list[int] = []  # one entry per hold, as a plain list: the independent count
    cached: dict[bytes, int] = {}
    for op, n in ops:
        if op == "allocate" and pool.num_free:
            block = pool.allocate()
            assert block not in held  # a free block is held by nobody
            cached = {k: b for k, b in cached.items() if b != block}  # evicted, if it was
            held.append(block)
        elif op == "release" and held:
            block = held.pop(n % len(held))
            pool.release(block)
        elif op == "register" and held:
            block = held[n % len(held)]
            key = bytes([n])
            if key not in cached and block not in cached.values():
                cached[key] = block
            pool.register(block, key)
        elif op == "hit":
            block = pool.take_cached(bytes([n]))
            assert block == cached.get(bytes([n]))
            if block is not None:
                held.append(block)
        for block in range(num_blocks):
            assert pool.ref_counts[block] == held.count(block)
        assert pool.num_free == num_blocks - len(set(held))
    for block in held:
        pool.release(block)
    assert pool.num_free == num_blocks and not any(pool.ref_counts)
    with pytest.raises(ValueError, match="double free"):
        pool.release(0)


@settings(max_examples=60, deadline=None)
@given(held=st.sets(st.integers(0, 11)), keyed=st.sets(st.integers(0, 11)),
       avoid=st.lists(st.tuples(st.integers(-2, 12), st.integers(0, 6)), max_size=3),
       length=st.integers(1, 6), prefer=st.integers(0, 11))
def test_a_run_of_free_blocks_is_found_and_a_preferred_free_block_is_handed_out(
        held, keyed, avoid, length, prefer):
    pool = BlockPool(12, block_size=2)
    blocks = [pool.allocate() for _ in range(12)]
    for block in blocks:  # free all but ``held``; ``keyed`` free ones keep a cached prefix
        if block in keyed:
            pool.register(block, bytes([block]))
        if block not in held:
            pool.release(block)
    spans = [(start, start + n) for start, n in avoid]
    usable = [b not in held and b not in keyed and not any(s <= b < e for s, e in spans)
              for b in range(12)]  # the reference: a plain scan of every start
    runs = {start: next((n for n in range(12 - start) if not usable[start + n]), 12 - start)
            for start in range(12) if usable[start] and (start == 0 or not usable[start - 1])}
    found = pool.open_run(length, spans)
    fitting = [start for start, n in runs.items() if n >= length]
    if fitting:
        assert found == min(fitting)
    elif runs:
        assert runs[found] == max(runs.values()) and found == min(
            start for start, n in runs.items() if n == max(runs.values()))
    else:
        assert found is None
    if pool.num_free:
        first_free = copy.deepcopy(pool).allocate()  # what a plain allocate hands out
        block = pool.allocate(prefer)
        free_keyless = prefer not in held and prefer not in keyed
        assert block == (prefer if free_keyless else first_free)
        assert pool.ref_counts[block] == 1


def test_a_free_block_with_a_prefix_is_evicted_last_and_least_recently_freed_first():
    pool = BlockPool(3, block_size=2)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    pool.register(a, b"a")
    pool.register(b, b"b")
    pool.release(b)  # freed first: evicted first among the cached
    pool.release(a)
    pool.release(c)  # no prefix: reused before any cached block
    assert [pool.allocate() for _ in range(3)] == [c, b, a]
    assert not pool.is_cached(b"a") and pool.evictions == 2


@given(tokens=st.lists(st.integers(0, 9), max_size=12), block_size=st.integers(1, 4),
       other=st.integers(0, 9))
def test_a_prefix_key_names_every_token_up_to_the_end_of_its_block(tokens, block_size, other):
    keys = block_hashes(tokens, block_size)
    assert len(keys) == len(tokens) // block_size
    for i, key in enumerate(keys):
        end = (i + 1) * block_size
        assert block_hashes(tokens[:end] + [other], block_size)[i] == key  # later tokens: no
        if tokens:
            changed = [other + 10] + tokens[1:end]  # the first token changed: a new key
            assert block_hashes(changed, block_size)[i] != key


def test_a_family_whose_layers_have_no_paged_form_is_refused_by_name():
    from gpt_components.kv_cache import CacheStack, LayerCache

    class RecurrentState(LayerCache):
        pass

    model = tiny_model("llama", 0)
    model.new_kv_cache = lambda batch, tokens: CacheStack([RecurrentState(1, 1)], 1, 1)
    with pytest.raises(ValueError, match="RecurrentState, which has no paged form") as error:
        PagedKVCache(model, 4, 2)
    assert error.value.parameter == "model"


def test_an_attention_that_ignores_the_paged_mask_is_refused_before_any_request():
    from gpt_components.serving.engine import Engine

    model = tiny_model("llama", 0)
    attention = model.trf_blocks[1].att
    attention._cache_attends = lambda cache, need_weights: False  # it stores, then attends
    own_forward = attention.forward

    def forgetful(x, rope=None, cache=None, start=None, need_weights=False):
        if cache is not None:  # as an attention written before paged caches: no mask asked
            cache.visible = lambda window=None: None
        return own_forward(x, rope, cache, start, need_weights)

    attention.forward = forgetful
    with pytest.raises(ValueError, match="layer 1's attention did not ask") as error:
        Engine(model, block_size=2, num_blocks=4)
    assert error.value.parameter == "model"


@settings(max_examples=1, deadline=None)
@given(batch=batches())
def test_a_hybrids_recurrent_layers_read_and_write_each_rows_own_state_slot(batch):
    lengths, cuts, block_size, seed = batch
    model = tiny_model("qwen3_next", seed % 1000)
    g = generator(seed)
    sequences = [torch.randint(0, 64, (n,), generator=g) for n in lengths]
    paged = run_paged(model, sequences, block_size, cuts, "fast")
    with torch.no_grad():
        for sequence, logits in zip(sequences, paged, strict=True):
            torch.testing.assert_close(logits, model(sequence[None])[0], rtol=1e-10,
                                       atol=1e-10)


def test_a_hybrid_refuses_rows_of_unequal_counts_and_shared_state_slots():
    model = tiny_model("qwen3_5_text", 0)
    cache = PagedKVCache(model, 8, 2, ring_rows=2, max_chunk=4)
    assert cache.stateful and cache.state_rows == 2
    with pytest.raises(ValueError, match="padding would write") as error:
        cache.prepare([[0, 1], [2]], [0, 0], [3, 2], [0, 1])
    assert error.value.parameter == "counts"
    for rings in ([0, 0], [0, 2]):
        with pytest.raises(ValueError, match="state slot") as error:
            cache.prepare([[0], [1]], [0, 0], [2, 2], rings)
        assert error.value.parameter == "rings"
