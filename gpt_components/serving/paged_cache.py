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
  ``"fast"`` gathers every slot in one indexing; the spec proves them equal.
- ``PagedKVCache``: one ``PagedLayerCache`` per layer, made from a model, which the engine
  points at the rows of each step (``prepare``) before one forward pass over all of them. With
  ``ring_rows``, windowed layers keep only their window's pages: a ring of blocks per row, in
  a pool of their own, the rest of a long sequence written over as the window moves on.

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
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..kv_cache import CacheStack, LayerCache, LayerKVCache
from ..machinery.checks import check_choice, check_instance, check_int, value_error
from ..machinery.language_model import LanguageModel
from ..modern.latent_attention import LatentKVCache
from ..modern.sliding_window import WindowLayerCache

__all__ = ["BlockPool", "block_hashes", "PagedLayerCache", "PagedKVCache", "GATHER_KERNELS"]

#: How a paged layer reads a sequence's pages: block by block, or every slot in one indexing.
GATHER_KERNELS = ("fast", "textbook")

#: The layer cache kinds that have a paged form: what one position of each holds is a few
#: vectors, written and read in position order (a recurrent state has no positions to page).
PAGEABLE = (LayerKVCache, WindowLayerCache, LatentKVCache)


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

    def allocate(self) -> int:
        """A free block, held once (a cached prefix in it is forgotten)."""
        if not self._free:
            raise value_error("num_blocks", f"all {self.num_blocks} blocks are held: none to "
                                            f"allocate")
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
                 gather: str = "fast", ring: bool = False,
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

    @property
    def layout(self) -> tuple:
        return self._layout

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.step.rings if self.ring else self.step.pages
        pools = list(self.buffers(recurse=False))
        gathered = []
        for pool, new in zip(pools, (k, v), strict=True):
            rows = new.movedim(self.token_dim, 1)  # (B, T, *per_position)
            pool[step.write_slots] = rows[self.step.real].to(pool.dtype)
            gathered.append(self._gather(pool, step).movedim(1, self.token_dim))
        self.unread = True
        return gathered[0], gathered[1]

    def _gather(self, pool: torch.Tensor, step: _Slots) -> torch.Tensor:
        """Every row's positions ``0 .. S - 1`` in order, (B, S, *per_position)."""
        if self.gather == "fast":  # index_select: a few times faster than pool[slots]
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
        if self.ring and window != self.window:  # a ring holds nothing older than its window
            raise value_error("window", f"this layer's pages are a ring of its window of "
                                        f"{self.window} positions; its attention asked for "
                                        f"window={window}")
        return self.step.visible(window)


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
        self.write_slots = self._slots(table_t, step.positions, block_size)[step.real]  # (N)

    @staticmethod
    def _slots(tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
        """The pool slot of each (row, position): table[p // bs] * bs + p % bs."""
        blocks = torch.gather(tables, 1, (positions // block_size).clamp(max=tables.shape[1] - 1))
        return blocks * block_size + positions % block_size


class _Step:
    """Where one forward pass's rows sit: computed once in ``prepare``, read by every layer."""

    def __init__(self, tables: list[list[int]], starts: list[int], counts: list[int],
                 block_size: int, device: torch.device,
                 ring_tables: list[list[int]] | None = None) -> None:
        self.lengths = [s + c for s, c in zip(starts, counts, strict=True)]
        self.longest = max(self.lengths)
        t = max(counts)
        starts_t = torch.tensor(starts, device=device)
        counts_t = torch.tensor(counts, device=device)
        offsets = torch.arange(t, device=device)
        self.real = offsets[None, :] < counts_t[:, None]  # (B, T): False on padding
        # Padding repeats the row's last position: in range for a position table, and its
        # query sees what the last real one sees.
        self.positions = starts_t[:, None] + torch.minimum(offsets[None, :],
                                                           counts_t[:, None] - 1)  # (B, T)
        self.pages = _Slots(tables, self, block_size)
        self.rings = None if ring_tables is None else _Slots(ring_tables, self, block_size)
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
    """

    def __init__(self, model: nn.Module, num_blocks: int, block_size: int, *,
                 gather: str = "fast", ring_rows: int | None = None,
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
        for index, layer in enumerate(own.layers):
            if type(layer) not in PAGEABLE:
                raise value_error("model", f"{type(model).__name__} cannot be served from "
                                           f"pages: its layer {index} keeps a "
                                           f"{type(layer).__name__}, which has no paged form "
                                           f"(pageable: {[k.__name__ for k in PAGEABLE]})")
            if id(layer) in paged:
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
        self._step: _Step | None = None

    @property
    def ringed(self) -> bool:
        """Whether windowed layers keep rings of pages (made with ``ring_rows``)."""
        return self.ring_blocks > 0

    def prepare(self, tables: Sequence[Sequence[int]], starts: Sequence[int],
                counts: Sequence[int], rings: Sequence[int] | None = None) -> None:
        """Point every layer at the next forward's rows (see the class docstring); ``rings``
        names each row's ring (distinct, below ``ring_rows``; default: the row's index)."""
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
        if self.ringed:
            rings = list(range(len(tables))) if rings is None else list(rings)
            if len(set(rings)) != len(rings) or len(rings) != len(tables) or not all(
                    0 <= r < self.ring_rows for r in rings):
                raise value_error("rings", f"rings must name one distinct ring in [0, "
                                           f"{self.ring_rows}) per row, got {rings}")
            # Block i of a row lives in block i % R of its ring: positions a window has left
            # behind are written over.
            r = self.ring_blocks
            ring_tables = [[ring * r + i % r for i in range(len(table))]
                           for ring, table in zip(rings, tables, strict=True)]
        self._step = _Step(tables, starts, counts, self.block_size, device, ring_tables)
        self.batch_size = len(tables)
        for layer in self._distinct():
            layer.step, layer.batch_size, layer.unread = self._step, len(tables), False

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
