"""The paged KV cache: memory in fixed-size blocks, a block table per sequence, a free list.

A contiguous cache reserves ``max_tokens`` positions for every row up front, whatever the row
will use. Serving many sequences of unknown lengths that way wastes most of the memory. The
paged cache (vLLM's PagedAttention) keeps one shared pool of blocks of ``block_size``
positions per layer; each sequence owns a *block table*, the list of its blocks in position
order, and takes a new block only when its last one is full. Position ``p`` of a sequence lives
in slot ``table[p // block_size] * block_size + p % block_size`` of the pool. So a sequence
holds at most one partly filled block, and a block can be shared: two sequences that begin
with the same tokens can point at the same blocks (prefix caching, ``BlockPool``).

Exports:

- ``BlockPool``: the allocator: a free list, a reference count per block, and the prefix
  cache (full blocks keyed by the hash of every token up to their end, evicted least recently
  used once free).
- ``block_hashes(tokens, block_size)``: those keys, chained, one per full block.
- ``PagedLayerCache``: one layer's pages, a ``LayerCache`` standing in for the model's own
  layer cache (plain keys and values, a sliding window's or MLA's latents): ``store(k, v)``
  writes each row's new positions into its pages and returns every row's keys and values
  gathered in position order, padded to the longest row; ``visible(window)`` says which of
  them each query may see. ``gather="textbook"`` walks each block table block by block,
  ``"fast"`` gathers every slot in one indexing; ``"rows"`` (the default) also lets an
  attention hand the cache its queries (``attend``, with GPT-OSS's sinks or MLA's absorbed
  queries as well): each row then reads only its own keys (its window's, for a windowed
  layer), where they lie when its blocks follow one another, gathered when they are
  scattered, no row padded to the longest; the spec proves all three equal.
- ``PagedKVCache``: one ``PagedLayerCache`` per layer, made from a model, which the engine
  points at the rows of each step (``prepare``) before one forward pass over all of them
  (padded to the longest row, or ``packed`` into one when every layer ``attend``s:
  ``packable``, found by ``probe``). With ``ring_rows``, windowed layers keep only their
  window's pages: a ring of blocks per row, in a pool of their own, the rest of a long
  sequence written over as the window moves on.
- ``PagedStateCache``: a recurrent layer's (Gated DeltaNet's) state and convolution tail, one
  slot per running sequence beside the pages: constant size, nothing to page.
- ``recurrent_layers(model)``: which of a model's layers keep such a state.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> cache = PagedKVCache(model, num_blocks=8, block_size=4)
>>> pool = BlockPool(num_blocks=8, block_size=4)
>>> tables = [[pool.allocate()], [pool.allocate(), pool.allocate()]]  # 3 and 6 tokens
>>> cache.prepare(tables, starts=[0, 0], counts=[3, 6])
>>> model(torch.randint(0, 50, (2, 6)), kv_cache=cache).shape
torch.Size([2, 6, 50])
>>> cache.positions.tolist()  # row 0's padding repeats its last position
[[0, 1, 2, 2, 2, 2], [0, 1, 2, 3, 4, 5]]
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..kv_cache import CacheStack, LayerCache, LayerKVCache
from ..machinery.checks import check_bool, check_choice, check_instance, check_int, value_error
from ..machinery.language_model import LanguageModel
from ..modern.latent_attention import LatentKVCache
from ..modern.sliding_window import WindowLayerCache
from ..newest.gated_deltanet import DeltaNetCache
from ..newest.sinks import sink_attention_weights

__all__ = ["BlockPool", "block_hashes", "PagedLayerCache", "PagedStateCache", "PagedKVCache",
           "GATHER_KERNELS", "recurrent_layers"]

#: How a paged layer reads a sequence's pages: each row's own keys, attended row by row by the
#: cache itself (where the layer's attention lets it: ``PagedLayerCache.attend``); every row's
#: keys in one indexing, padded to the longest row; or block by block, the textbook walk.
GATHER_KERNELS = ("rows", "fast", "textbook")

#: The layer cache kinds that have a paged form: what one position of each holds is a few
#: vectors, written and read in position order (a recurrent state has no positions to page).
PAGEABLE = (LayerKVCache, WindowLayerCache, LatentKVCache)
#: The layer cache kinds that keep a recurrent state of fixed size per sequence instead: no
#: pages, one *state slot* per running sequence (``PagedStateCache``).
STATEFUL = (DeltaNetCache,)


def recurrent_layers(model: nn.Module) -> list[int]:
    """The indices of ``model``'s layers whose cache is a recurrent state (``STATEFUL``)."""
    own = model.new_kv_cache(1, 1)
    return [index for index, layer in enumerate(own.layers) if type(layer) in STATEFUL]


def block_hashes(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """One key per full block of ``tokens``: the hash of every token up to the block's end.

    Chained (each block's key hashes the previous key with the block's tokens), so a key
    names the whole prefix, not just its block: two blocks of equal tokens after different
    prefixes get different keys. SHA-256, so two prefixes sharing a key is out of reach.
    """
    check_int("block_size", block_size, low=1)
    keys, key = [], b""
    for end in range(block_size, len(tokens) + 1, block_size):
        block = ",".join(str(int(t)) for t in tokens[end - block_size:end]).encode()
        key = hashlib.sha256(key + b"|" + block).digest()
        keys.append(key)
    return keys


class BlockPool:
    """The block allocator: a free list, reference counts, and a prefix cache of full blocks.

    A block is *free* when no sequence holds it (reference count 0). A free block may still
    hold a cached prefix (a key in the prefix cache): it is reused by a request whose prompt
    begins with that prefix (``take_cached``), or evicted when a new block is needed and no
    block without a key is free, least recently freed first. ``release`` refuses a block
    that is already free (a double free), so a bookkeeping slip is an error, not a leak.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = check_int("num_blocks", num_blocks, low=1)
        self.block_size = check_int("block_size", block_size, low=1)
        self.ref_counts = [0] * num_blocks
        # Free blocks in the order they are taken: keyless ones first, then cached ones,
        # least recently freed first (LRU eviction).
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._key_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks no sequence holds (cached prefixes among them)."""
        return len(self._free)

    def allocate(self, prefer: int | None = None) -> int:
        """A free block, held once (a cached prefix in it is forgotten): ``prefer`` if it is
        free and holds no cached prefix (so a sequence's blocks can follow one another, and
        attention read them in place), else the next in the free list's order."""
        if not self._free:
            raise value_error("num_blocks", f"all {self.num_blocks} blocks are held: none to "
                                            f"allocate")
        if prefer is not None and prefer in self._free and prefer not in self._key_of:
            del self._free[prefer]
            self.ref_counts[prefer] = 1
            return prefer
        block, _ = self._free.popitem(last=False)
        key = self._key_of.pop(block, None)
        if key is not None:
            del self._block_of[key]
            self.evictions += 1
        self.ref_counts[block] = 1
        return block

    def release(self, block: int) -> None:
        """Drop one hold on ``block``; once nobody holds it, it is free (its prefix kept)."""
        check_int("block", block, low=0, high=self.num_blocks - 1)
        if self.ref_counts[block] <= 0:
            raise value_error("block", f"block {block} is already free (a double free)")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free[block] = None  # at the end: evicted last, if it holds a prefix
            if block not in self._key_of:
                self._free.move_to_end(block, last=False)  # keyless: reused first

    def open_run(self, length: int, avoid: Sequence[tuple[int, int]] = ()) -> int | None:
        """The first block of ``length`` consecutive free blocks holding no cached prefix and
        outside the ranges ``avoid`` (``[start, end)``, space other sequences will grow
        into); failing that, of the longest such run; None if no block qualifies."""
        usable = [b in self._free and b not in self._key_of for b in range(self.num_blocks)]
        for start, end in avoid:
            for b in range(max(0, start), min(end, self.num_blocks)):
                usable[b] = False
        best, best_length, run_start = None, 0, None
        for b, ok in enumerate([*usable, False]):
            if ok and run_start is None:
                run_start = b
            elif not ok and run_start is not None:
                if b - run_start >= length:
                    return run_start
                if b - run_start > best_length:
                    best, best_length = run_start, b - run_start
                run_start = None
        return best

    def take_cached(self, key: bytes) -> int | None:
        """The block holding the prefix ``key``, held once more; None if not cached."""
        block = self._block_of.get(key)
        if block is not None:
            if self.ref_counts[block] == 0:
                del self._free[block]
            self.ref_counts[block] += 1
        return block

    def is_cached(self, key: bytes) -> bool:
        """Whether some block holds the prefix ``key``."""
        return key in self._block_of

    def cached_block(self, key: bytes) -> int | None:
        """The block holding the prefix ``key`` (not taken), or None."""
        return self._block_of.get(key)

    def register(self, block: int, key: bytes) -> None:
        """Record that held ``block`` is full and holds the prefix ``key`` (first one wins)."""
        if key not in self._block_of and block not in self._key_of:
            self._key_of[block] = key
            self._block_of[key] = block


class PagedLayerCache(LayerCache):
    """One layer's pages, standing in for the layer cache ``like`` of the model's own kind.

    Each of ``like``'s buffers (keys and values, or latents and RoPE keys) becomes a pool of
    ``num_blocks * block_size`` slots of one position each. ``PagedKVCache.prepare`` points
    the layer at the step's rows; ``store`` then writes and gathers. The layer reports
    ``like``'s layout, so the model checks it as the cache it replaces. ``ring=True`` (a
    windowed layer's, see ``PagedKVCache``) reads and writes through each row's ring of
    blocks instead of its block table.
    """

    def __init__(self, like: LayerCache, num_blocks: int, block_size: int, *,
                 gather: str = "rows", ring: bool = False,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(1, num_blocks * block_size)  # no row holds more than every slot
        self.gather = check_choice("gather", gather, GATHER_KERNELS)
        self.token_dim = like.token_dim
        self.block_size = block_size
        self._layout = like.layout
        for name, buffer in like.named_buffers(recurse=False):
            per_position = [size for axis, size in enumerate(buffer.shape)
                            if axis not in (0, like.token_dim)]
            self.register_buffer(name, torch.zeros(num_blocks * block_size, *per_position,
                                                   device=device, dtype=dtype),
                                 persistent=False)  # (slots, *per_position)
        self.ring = ring  # pages in per-sequence rings (a windowed layer's), not the tables
        self.window = getattr(like, "window", None)
        self.step: _Step | None = None
        self.unread = False  # stored this step, mask not yet asked for
        self.attended = False  # its attention handed it the queries this step (``attend``)

    @property
    def layout(self) -> tuple:
        return self._layout

    @property
    def attends(self) -> bool:
        """Whether an attention may hand this cache its queries (``attend``): when it reads
        row by row (``gather="rows"``)."""
        return self.gather == "rows"

    @property
    def latent(self) -> bool:
        """Whether the pages hold MLA's latents and RoPE keys (DeepSeek-V3), not keys and
        values per head."""
        return self._layout[0] == "LatentKVCache"

    def _put(self, k: torch.Tensor, v: torch.Tensor) -> tuple[_Slots, list[torch.Tensor]]:
        """Write each row's new positions into its pages; the step's slots and the pools."""
        step = self.step.rings if self.ring else self.step.pages
        pools = list(self.buffers(recurse=False))
        for pool, new in zip(pools, (k, v), strict=True):
            rows = new.movedim(self.token_dim, 1)  # (B, T, *per_position)
            # Packed, the one row holds every row's new positions, in the write slots' order.
            real = rows[0] if self.step.packed else rows[self.step.real]
            pool[step.write_slots] = real.to(pool.dtype)
        return step, pools

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.step.refuse_packed()
        step, pools = self._put(k, v)
        gathered = [self._gather(pool, step).movedim(1, self.token_dim) for pool in pools]
        self.unread = True
        return gathered[0], gathered[1]

    def attend(self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, *,
               scale: float | None = None, window: int | None = None,
               sinks: torch.Tensor | None = None) -> torch.Tensor:
        """Store ``k``, ``v`` (B, n_kv_heads, T, hd) and return softmax attention's output for
        the queries ``q`` (B, n_heads, T, hd), each row over its own keys only.

        What ``store`` then ``visible`` then SDPA compute, without padding every row's keys
        to the longest: row ``b``'s keys (from ``window - 1`` positions before its first
        query, for a windowed layer) are read from its pages and attended by its real
        queries alone, causally; a padding query's output is zeros. ``scale`` defaults to
        ``1 / sqrt(hd)``; query heads share key heads in groups (GQA) when there are more.
        ``sinks`` (n_heads,): a sink logit per head joins each softmax and takes its share
        (GPT-OSS's attention sinks, ``gpt_components.newest.sinks``), computed here as that
        module's textbook does: scores, the sink's column, softmax, the column dropped.

        Pages of MLA's latents (``latent``): ``k`` is the new latents (B, T, r), ``v`` their
        RoPE keys (B, T, rope), ``q`` the absorbed queries (B, n_heads, T, r + rope); each
        position's key is its latent and RoPE key side by side, its value the latent, shared
        by every head, and the output is (B, n_heads, T, r), for the layer to expand.

        ``k`` and ``v`` None: nothing new to store, the queries read what the pages hold (a
        layer attending to an earlier layer's keys through the same cache, as Gemma 4's last
        layers do; that layer has stored this step's positions already).
        """
        if not self.attends:
            raise value_error("gather", f"this paged layer reads its pages with gather="
                                        f"{self.gather!r}; attend needs gather='rows'")
        if (k is None) != (v is None):
            raise value_error("v", "k and v must both be given, or both None (read only)")
        if k is None:  # the shapes the pages hold stand in for the new keys' and values'
            keys, values = self.buffers(recurse=False)
            k, v = (pool.new_zeros(q.shape[0], 0, *pool.shape[1:]).movedim(1, self.token_dim)
                    for pool in (keys, values))
            self._check_queries(q[:, :, :0], k, v)
            step = self.step.rings if self.ring else self.step.pages
        else:
            self._check_queries(q, k, v)
            step, (keys, values) = self._put(k, v)
        self._check_window(window)
        self.unread, self.attended = False, True
        slots, spans, masks = step.reads(window)
        # The keys, then values, of rows whose blocks are scattered, gathered once (into a
        # buffer the layers share); the other rows' are read where they lie.
        gathered = (None, None) if slots is None else (
            self._read(keys, slots, "keys"), self._read(values, slots, "values"))
        out = q.new_zeros(*q.shape[:3], k.shape[-1] if self.latent else v.shape[-1])
        for b, ((in_place, at, n), mask) in enumerate(zip(spans, masks, strict=True)):
            kb, vb = (keys, values) if in_place else gathered
            kb, vb = self._row(kb[at:at + n].to(q.dtype), vb[at:at + n].to(q.dtype))
            gqa = q.shape[1] != kb.shape[1]
            row, first = self.step.queries_of(b)  # where its queries sit in q
            count = self.step.counts[b]
            qb = q[row:row + 1, :, first:first + count]
            if sinks is None:
                context = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask,
                                                         scale=scale, enable_gqa=gqa)
            else:
                context = _with_sinks(qb, kb, vb, mask, scale, sinks)
            out[row:row + 1, :, first:first + count] = context
        return out

    def _check_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.latent:
            width = k.shape[-1] + v.shape[-1]
            if q.dim() != 4 or k.dim() != 3 or q.shape[0] != k.shape[0] \
                    or q.shape[2] != k.shape[1] or q.shape[3] != width:
                raise value_error("q", f"q must be the absorbed queries (B, n_heads, T, "
                                       f"{width}) beside latents {tuple(k.shape)}, got "
                                       f"{tuple(q.shape)}")
        elif q.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] \
                or q.shape[3] != k.shape[3] or q.shape[1] % k.shape[1]:
            raise value_error("q", f"q must be (B, n_heads, T, hd) beside k's "
                                   f"{tuple(k.shape)}, n_heads a multiple of k's heads, got "
                                   f"{tuple(q.shape)}")

    def _row(self, keys: torch.Tensor,
             values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One row's L positions as SDPA's keys and values, (1, heads, L, .)."""
        if self.latent:  # a key: the latent and the RoPE key side by side; a value: the latent
            return torch.cat([keys, values], dim=-1)[None, None], keys[None, None]
        return keys.movedim(0, 1)[None], values.movedim(0, 1)[None]  # (L, nkv, hd) -> ...

    def _read(self, pool: torch.Tensor, slots: torch.Tensor, which: str) -> torch.Tensor:
        """``pool``'s positions at ``slots`` (N, *per_position); into the cache's reusable
        buffer when no gradient flows (a fresh tensor of this size for every layer would be
        memory the system has to hand over anew, page by page, each time)."""
        if torch.is_grad_enabled() and pool.requires_grad:
            return pool.index_select(0, slots)
        buffer = self.step.buffer(which, (len(slots), *pool.shape[1:]), pool.dtype, pool.device)
        return torch.index_select(pool, 0, slots, out=buffer)

    def _check_window(self, window: int | None) -> None:
        if self.ring and window != self.window:  # a ring holds nothing older than its window
            raise value_error("window", f"this layer's pages are a ring of its window of "
                                        f"{self.window} positions; its attention asked for "
                                        f"window={window}")

    def _gather(self, pool: torch.Tensor, step: _Slots) -> torch.Tensor:
        """Every row's positions ``0 .. S - 1`` in order, (B, S, *per_position)."""
        if self.gather != "textbook":  # index_select: a few times faster than pool[slots]
            picked = pool.index_select(0, step.read_slots.reshape(-1))  # (B * S, *per_position)
            return picked.view(*step.read_slots.shape, *pool.shape[1:])
        # The textbook walk: each row's blocks in table order, the last one cut at the row's
        # length, then padded (with the pool's first slot: never visible) to the longest row.
        blocks = pool.view(-1, self.block_size, *pool.shape[1:])  # (blocks, bs, *per_position)
        rows = []
        for table, length in zip(step.tables, step.lengths, strict=True):
            held = torch.cat([blocks[b] for b in table])[:length] if length else pool[:0]
            padding = pool[:1].expand(step.longest - length, *pool.shape[1:])
            rows.append(torch.cat([held, padding]))
        return torch.stack(rows)

    def visible(self, window: int | None = None) -> torch.Tensor:
        """(B, 1, T, S) True where a query may see a key: its own row's keys up to its
        position, within ``window`` positions back when given. A padding query repeats its
        row's last position, so no query sees nothing (a softmax of nothing is NaN)."""
        self.unread = False
        self.step.refuse_packed()
        self._check_window(window)
        return self.step.visible(window)


def _with_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scale: float | None, sinks: torch.Tensor) -> torch.Tensor:
    """One row's attention with a sink logit per head: q (1, nh, T, hd) over k, v (1, nkv,
    L, hd), ``mask`` (T, L) True where visible (None: all)."""
    _, nh, t, hd = q.shape
    nkv, s = k.shape[1], k.shape[2]
    folded = q.reshape(1, nkv, nh // nkv * t, hd)  # each group of query heads on its key head
    scores = (folded @ k.transpose(2, 3)).view(1, nh, t, s) * (hd ** -0.5 if scale is None
                                                                else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = sink_attention_weights(scores, sinks)  # (1, nh, T, L), each row sums below one
    return (weights.view(1, nkv, nh // nkv * t, s) @ v).view(1, nh, t, hd)


class PagedStateCache(LayerCache):
    """A recurrent layer's cache in serving: one *state slot* per running sequence, no pages.

    A Gated DeltaNet layer (``DeltaNetCache``) keeps, per sequence, a state of fixed size and
    its short convolution's last inputs: nothing per position, so nothing to page. This keeps
    ``slots`` of each (a pool beside the pages, one slot per running sequence); a step's row
    reads and writes its own slot (``PagedKVCache.prepare``'s ``rings``). A row whose first
    fed position is 0 starts from zeros, whatever its slot held before (a slot is reused as
    soon as its sequence ends or is preempted, and a preempted sequence recomputes from its
    first token, as with pages). Every row of a step must feed as many tokens as the others:
    the layer runs its rule over the padded width, and a padding token would write into the
    state and decay it (``prepare`` refuses rows of unequal counts).
    """

    def __init__(self, like: LayerCache, slots: int, max_tokens: int, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(1, max_tokens)
        self._layout = like.layout
        for name, buffer in like.named_buffers(recurse=False):
            self.register_buffer(name, torch.zeros(slots, *buffer.shape[1:], device=device,
                                                   dtype=dtype), persistent=False)
        self.ring = False
        self.step: _Step | None = None
        self.unread = False  # never set: a recurrent layer asks for no mask

    @property
    def layout(self) -> tuple:
        return self._layout

    def _write(self, k: torch.Tensor, v: torch.Tensor | None,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``k``: the new positions' convolution inputs (B, conv_dim, T); returns each row's
        inputs just before them and its state before them (zeros for a row at position 0)."""
        self.step.refuse_packed()
        if k.shape[1] != self.conv_tail.shape[1]:
            raise value_error("k", f"k must be the convolution's inputs (B, conv_dim="
                                   f"{self.conv_tail.shape[1]}, T), got {tuple(k.shape)}")
        slots, fresh = self.step.slots, self.step.fresh  # (B), (B)
        past = self.conv_tail.index_select(0, slots).masked_fill(fresh[:, None, None], 0)
        state = self.state.index_select(0, slots).masked_fill(fresh[:, None, None, None], 0)
        window = torch.cat([past, k.to(past.dtype)], dim=-1)  # every row's T tokens are real
        self.conv_tail[slots] = window[..., window.shape[-1] - past.shape[-1]:]
        return past, state

    def keep_state(self, state: torch.Tensor) -> None:
        """Each row's state after the positions just stored, into its slot."""
        self.state[self.step.slots] = state.to(self.state.dtype)


class _Slots:
    """Where one step's rows read and write in a pool, through one set of block tables."""

    def __init__(self, tables: list[list[int]], step: _Step, block_size: int) -> None:
        device = step.positions.device
        self.tables, self.lengths, self.longest = tables, step.lengths, step.longest
        width = max(len(table) for table in tables)
        table_t = torch.tensor([table + [0] * (width - len(table)) for table in tables],
                               device=device)  # (B, blocks)
        key_positions = torch.arange(step.longest, device=device)  # (S)
        self.read_slots = self._slots(table_t, key_positions.expand(len(tables), -1),
                                      block_size)  # (B, S)
        self.write_slots = self._slots(table_t, step.row_positions,
                                       block_size)[step.real]  # (N), row after row
        self.step, self.block_size = step, block_size
        self._reads: dict[int | None, tuple] = {}

    def reads(self, window: int | None) -> tuple[torch.Tensor | None, list, list]:
        """What ``attend`` reads, worked out once per step for every layer. A row's visible
        keys (from ``window - 1`` positions before its first query when windowed) lie in a
        stretch of the pool when its blocks follow one another: read in place. Otherwise
        they are gathered: the slots to gather, row after row (None if no row needs it).
        Per row: whether in place, where its keys begin (in the pool, or among the
        gathered) and how many; and its queries' mask (None for one query)."""
        if window not in self._reads:
            pieces, spans, masks, at = [], [], [], 0
            bs = self.block_size
            for b, (start, length) in enumerate(zip(self.step.starts, self.lengths,
                                                    strict=True)):
                first = 0 if window is None else max(0, start - window + 1)
                blocks = self.tables[b][first // bs:(length - 1) // bs + 1]
                if blocks == list(range(blocks[0], blocks[0] + len(blocks))):
                    # Its blocks follow one another: its keys are one stretch of the pool.
                    spans.append((True, blocks[0] * bs + first % bs, length - first))
                else:
                    pieces.append(self.read_slots[b, first:length])
                    spans.append((False, at, length - first))
                    at += length - first
                count = length - start  # query i (at start + i) sees keys first + j up to it
                masks.append(self.step.row_mask(start, count, first, window) if count > 1
                              else None)
            gathered = torch.cat(pieces) if pieces else None
            self._reads[window] = (gathered, spans, masks)
        return self._reads[window]

    @staticmethod
    def _slots(tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
        """The pool slot of each (row, position): table[p // bs] * bs + p % bs."""
        blocks = torch.gather(tables, 1, (positions // block_size).clamp(max=tables.shape[1] - 1))
        return blocks * block_size + positions % block_size


class _Step:
    """Where one forward pass's rows sit: computed once in ``prepare``, read by every layer."""

    def __init__(self, tables: list[list[int]], starts: list[int], counts: list[int],
                 block_size: int, device: torch.device,
                 ring_tables: list[list[int]] | None = None,
                 rows: list[int] | None = None, packed: bool = False,
                 scratch: dict | None = None) -> None:
        self.starts, self.counts, self.packed = starts, counts, packed
        self.lengths = [s + c for s, c in zip(starts, counts, strict=True)]
        self.longest = max(self.lengths)
        t = max(counts)
        starts_t = torch.tensor(starts, device=device)
        counts_t = torch.tensor(counts, device=device)
        offsets = torch.arange(t, device=device)
        self.real = offsets[None, :] < counts_t[:, None]  # (B, T): False on padding
        # Padding repeats the row's last position: in range for a position table, and its
        # query sees what the last real one sees.
        self.row_positions = starts_t[:, None] + torch.minimum(
            offsets[None, :], counts_t[:, None] - 1)  # (B, T)
        # What the model reads: each row's positions, or, packed, every row's real positions
        # one after the other in a single row (1, N).
        self.positions = self.row_positions[self.real][None] if packed else self.row_positions
        self._first = [sum(counts[:b]) for b in range(len(counts))]  # packed offsets
        self._scratch = scratch if scratch is not None else {}
        self.pages = _Slots(tables, self, block_size)
        self.rings = None if ring_tables is None else _Slots(ring_tables, self, block_size)
        # Each row's state slot in recurrent layers, and whether it starts a sequence afresh.
        self.slots = torch.tensor(range(len(tables)) if rows is None else rows, device=device)
        self.fresh = starts_t == 0
        self._masks: dict[int | None, torch.Tensor] = {}

    def visible(self, window: int | None) -> torch.Tensor:
        mask = self._masks.get(window)
        if mask is None:
            queries = self.positions[:, :, None]  # (B, T, 1)
            keys = torch.arange(self.longest, device=queries.device)[None, None, :]  # (1, 1, S)
            mask = keys <= queries  # a query's position never passes its row's length
            if window is not None:
                mask &= queries - keys < window
            mask = self._masks[window] = mask[:, None]  # (B, 1, T, S)
        return mask

    def buffer(self, which: str, shape: tuple, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        """A tensor of ``shape`` to read into, reused by every layer and step (grown when too
        small): its contents are scratch, valid until the next read of the same name."""
        key = (which, tuple(shape[1:]), dtype, device)
        numel = math.prod(shape)
        held = self._scratch.get(key)
        if held is None or held.numel() < numel:
            held = self._scratch[key] = torch.empty(numel + numel // 4, dtype=dtype,
                                                    device=device)
        return held[:numel].view(shape)

    def queries_of(self, b: int) -> tuple[int, int]:
        """Where row ``b``'s queries sit in the step's (rows, T) input: its row and offset."""
        return (0, self._first[b]) if self.packed else (b, 0)

    def refuse_packed(self) -> None:
        """A packed step's rows share one input row: only ``attend`` can tell them apart."""
        if self.packed:
            raise value_error("packed", "this step packs every row's tokens into one input "
                                        "row, which only an attention that hands the cache "
                                        "its queries (LayerCache.attend) can read; prepare "
                                        "it with packed=False for this model")

    def row_mask(self, start: int, count: int, first: int, window: int | None) -> torch.Tensor:
        """(count, L) True where query ``i`` (position ``start + i``) may see key ``j`` (at
        ``first + j``), ``L = start + count - first``: causal, within ``window`` if given."""
        device = self.positions.device
        queries = torch.arange(start, start + count, device=device)[:, None]
        keys = torch.arange(first, start + count, device=device)[None, :]
        mask = keys <= queries
        if window is not None:
            mask &= queries - keys < window
        return mask


class PagedKVCache(CacheStack):
    """Paged caches for every layer of ``model``, over one shared block numbering.

    The blocks themselves are handed out by a ``BlockPool`` (the engine's); this holds their
    contents, ``num_blocks * block_size`` positions per layer. A forward pass over several
    sequences at once goes: ``prepare(tables, starts, counts)`` (row ``b`` feeds ``counts[b]``
    tokens at positions ``starts[b] ..``, written into the blocks ``tables[b]``, which must
    cover them), then the model's forward with ``kv_cache=`` this cache, its ids padded on the
    right to the longest row. ``length`` stays 0: each sequence's length is its row's
    ``starts + counts``, which the engine keeps.

    ``ring_rows`` (None: every layer paged through the tables) gives each windowed layer a
    pool of ``ring_rows`` rings instead, each of ``ring_blocks`` blocks spanning its window and
    ``max_chunk`` tokens (the most one row feeds in one pass); ``prepare``'s ``rings`` then
    says which ring each row uses.

    A recurrent layer (Gated DeltaNet's ``DeltaNetCache``) has no positions to page: it gets
    a ``PagedStateCache`` of ``ring_rows`` state slots (None: ``num_blocks``), one per row,
    named by the same ``rings``; its rows must then feed equal counts (``stateful``).
    """

    def __init__(self, model: nn.Module, num_blocks: int, block_size: int, *,
                 gather: str = "rows", ring_rows: int | None = None,
                 max_chunk: int | None = None) -> None:
        check_int("num_blocks", num_blocks, low=1)
        check_int("block_size", block_size, low=1)
        check_choice("gather", gather, GATHER_KERNELS)
        check_instance("model", model, LanguageModel, "a language model of gpt_components")
        check_int("ring_rows", ring_rows, low=1, optional=True)
        if ring_rows is not None:
            check_int("max_chunk", max_chunk, low=1)
        own = model.new_kv_cache(1, 1)
        weight = model.tok_emb.weight
        paged: dict[int, PagedLayerCache] = {}  # a layer cache shared by layers stays shared
        state_rows = ring_rows if ring_rows is not None else num_blocks
        for index, layer in enumerate(own.layers):
            if type(layer) not in PAGEABLE + STATEFUL:
                raise value_error("model", f"{type(model).__name__} cannot be served from "
                                           f"pages: its layer {index} keeps a "
                                           f"{type(layer).__name__}, which has no paged form "
                                           f"(pageable: {[k.__name__ for k in PAGEABLE]}; "
                                           f"kept in state slots: "
                                           f"{[k.__name__ for k in STATEFUL]})")
            if id(layer) in paged:
                continue
            if type(layer) in STATEFUL:
                paged[id(layer)] = PagedStateCache(layer, state_rows, model.cfg.context_length,
                                                   device=weight.device, dtype=weight.dtype)
                continue
            window = getattr(layer, "window", None) if ring_rows is not None else None
            if window is not None:
                # A ring spans a window and a chunk: no slot a query may see is overwritten
                # within the step, and a stale slot is always outside the window.
                # (Never longer than the context: such a ring never wraps.)
                ring_blocks = min(-(-(window + max_chunk) // block_size) + 1,
                                  -(-model.cfg.context_length // block_size))
                paged[id(layer)] = PagedLayerCache(layer, ring_rows * ring_blocks, block_size,
                                                   gather=gather, ring=True,
                                                   device=weight.device, dtype=weight.dtype)
            else:
                paged[id(layer)] = PagedLayerCache(layer, num_blocks, block_size, gather=gather,
                                                   device=weight.device, dtype=weight.dtype)
        super().__init__((paged[id(layer)] for layer in own.layers), 1,
                         model.cfg.context_length)
        self.num_blocks, self.block_size = num_blocks, block_size
        #: Blocks per ring of the windowed layers (0: none ringed), one ring per row at most.
        self.ring_blocks = max((next(layer.buffers()).shape[0] // block_size // ring_rows
                                for layer in self._distinct() if layer.ring), default=0)
        self.ring_rows = ring_rows
        #: State slots of the recurrent layers (0: the model has none), one per row at most.
        self.state_rows = state_rows if any(
            isinstance(layer, PagedStateCache) for layer in self._distinct()) else 0
        self._step: _Step | None = None
        self._scratch: dict = {}  # what attention reads keys into, kept from step to step
        #: Whether every layer hands the cache its queries (``PagedLayerCache.attend``), so
        #: a step may pack its rows into one (``prepare(..., packed=True)``): no padding.
        #: Found by a forward pass (``probe``); False until then.
        self.packable = False

    def probe(self, model: nn.Module) -> PagedKVCache:
        """Run ``model`` over one token through this cache: a family whose attention neither
        asks which keys each row sees nor hands the cache its queries is refused (a
        ValueError naming it), and ``packable`` is set. Returns this cache."""
        self.prepare([[0]], [0], [1])
        with torch.no_grad():
            model.hidden_states(torch.zeros(1, 1, dtype=torch.long,
                                            device=model.tok_emb.weight.device), kv_cache=self)
        self.packable = all(getattr(layer, "attended", False) for layer in self._distinct())
        return self

    @property
    def stateful(self) -> bool:
        """Whether some layer keeps a recurrent state in slots (``PagedStateCache``)."""
        return self.state_rows > 0

    @property
    def ringed(self) -> bool:
        """Whether windowed layers keep rings of pages (made with ``ring_rows``)."""
        return self.ring_blocks > 0

    def prepare(self, tables: Sequence[Sequence[int]], starts: Sequence[int],
                counts: Sequence[int], rings: Sequence[int] | None = None, *,
                packed: bool = False) -> None:
        """Point every layer at the next forward's rows (see the class docstring); ``rings``
        names each row's ring and state slot (distinct, below ``ring_rows``; default: the
        row's index). ``packed``: the forward's ids are every row's tokens one after the
        other in a single row (1, sum(counts)), no padding; only a model whose every layer
        hands the cache its queries (``packable``) can run such a step."""
        tables = [list(table) for table in tables]
        starts, counts = list(starts), list(counts)
        if not tables or not len(tables) == len(starts) == len(counts):
            raise value_error("tables", f"tables, starts and counts must hold one entry per "
                                        f"row (at least one), got {len(tables)}, {len(starts)} "
                                        f"and {len(counts)}")
        for table, start, count in zip(tables, starts, counts, strict=True):
            check_int("starts", start, low=0)
            check_int("counts", count, low=1)
            if start + count > len(table) * self.block_size:
                raise value_error("tables", f"a row of {start + count} positions needs "
                                            f"{-(-(start + count) // self.block_size)} blocks, "
                                            f"its table holds {len(table)}")
            for block in table:
                check_int("tables", block, low=0, high=self.num_blocks - 1)
        device = next(self.layers[0].buffers()).device
        ring_tables = None
        rings = list(range(len(tables))) if rings is None else list(rings)
        most = self.ring_rows if self.ringed else self.state_rows
        if (self.ringed or self.stateful) and (
                len(set(rings)) != len(rings) or len(rings) != len(tables)
                or not all(isinstance(r, int) and 0 <= r < most for r in rings)):
            raise value_error("rings", f"rings must name one distinct ring (state slot) in "
                                       f"[0, {most}) per row, got {rings}")
        if self.stateful and len(set(counts)) > 1:
            raise value_error("counts", f"a model with recurrent layers needs every row to "
                                        f"feed as many tokens (padding would write into a "
                                        f"row's state), got counts={counts}")
        if self.ringed:
            # Block i of a row lives in block i % R of its ring: positions a window has left
            # behind are written over.
            r = self.ring_blocks
            ring_tables = [[ring * r + i % r for i in range(len(table))]
                           for ring, table in zip(rings, tables, strict=True)]
        check_bool("packed", packed)
        self._step = _Step(tables, starts, counts, self.block_size, device, ring_tables,
                           rings if self.stateful else None, packed, self._scratch)
        self.batch_size = 1 if packed else len(tables)
        for layer in self._distinct():
            layer.step, layer.batch_size, layer.unread = self._step, self.batch_size, False
            layer.attended = False

    @property
    def positions(self) -> torch.Tensor | None:
        return None if self._step is None else self._step.positions

    def advance(self, num_tokens: int) -> None:
        """Called by the model after every layer stored: check each read its mask."""
        for index, layer in enumerate(self.layers):
            if layer.unread:
                raise value_error("model", f"layer {index}'s attention did not ask the paged "
                                           f"cache which keys each row sees (LayerCache."
                                           f"visible): this family cannot be served from pages")
