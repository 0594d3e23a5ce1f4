"""The serving engine: many requests, one model, one batched forward pass per step.

``generate`` answers one prompt at a time. A server answers many people at once, and the
engine here is how (the design of vLLM and its small cousins such as nano-vllm, written
out for reading):

- **Requests queue** (``add_request``); each ``step`` the *scheduler* picks what to run.
- **Paged memory**: every sequence's keys and values live in blocks of ``block_size``
  positions of one shared pool (``paged_cache``); a sequence takes a block only when its last
  one is full, and gives them all back when it finishes.
- **Continuous batching**: a step is one forward pass over many sequences of different
  lengths. New requests join as soon as blocks are free; finished ones leave at once.
- **Chunked prefill**: a step feeds at most ``max_batch_tokens`` prompt tokens, shared out
  among the prompts in hand (water filling: short ones whole, long ones in chunks), beside
  every running sequence's next token, so a long prompt cannot stall everyone else's next
  token. (The rows of a step are packed into one row of the model's input, no padding, when
  every attention of the model hands the paged cache its queries; otherwise they are padded,
  and prefill steps and decode steps take turns instead.)
- **Admission**: a waiting request starts only when its whole prompt fits in the free pages
  beside what the running sequences are promised (so it is not preempted half-fed), and gets
  a *home*, a run of free blocks it can grow into, so that its keys lie in one stretch of each
  pool and attention reads them in place.
- **Preemption**: when no block is free for a running sequence, the youngest sequence gives
  its blocks back and waits; it resumes later by recomputing its tokens (its sampling state
  is kept, so its output is unchanged).
- **Prefix caching** (``prefix_caching``): full blocks stay cached after their sequence ends,
  keyed by the hash of every token up to their end; a prompt that begins with cached blocks
  reuses them and prefills only the rest.
- **State slots** (the hybrids, Qwen3-Next and Qwen3.5): a Gated DeltaNet layer keeps a state
  of fixed size per sequence, not keys per position: one slot per running sequence, beside the
  pages. A prefill step then feeds every row the same number of tokens (no padding may reach a
  state); prefix caching is off and speculative decoding refused (a state has no blocks to
  share and cannot be rolled back).
- **Speculative decoding** (``draft_model``, ``num_speculative_tokens``): a small model with
  the same tokenizer drafts ``k`` tokens, the model checks them in one forward pass
  (``speculative``).

Every shortcut changes nothing but speed: each request gets the tokens ``generate`` gives it
alone (greedy, or sampling with the request's ``seed``: each request draws from its own
``torch.Generator``, once per token, as ``generate`` does), which ``spec/test_serving_engine.py``
proves over drawn sets of requests. Speculative sampling keeps the model's distribution but not
the draws of one seed (it consumes random numbers differently).

Stop strings (``SamplingParams.stop``, which need ``tokenizer``): the generated text is
decoded after each token; once it contains a stop string, the request ends with reason
``"stop"`` and its tokens are cut before the token in which the stop string begins (that
token's text before the stop string is dropped too: a token is never split). Until then, the
tokens whose text could still be the start of a stop string are held back, so no token is
reported that a later stop would take back.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.serving.requests import SamplingParams
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> engine = Engine(model, block_size=4, num_blocks=16)
>>> engine.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=3))
>>> engine.add_request("b", [4, 5], SamplingParams(temperature=0.8, seed=7, max_tokens=2))
>>> finished = {}
>>> while engine.has_unfinished():
...     finished.update({o.request_id: o for o in engine.step() if o.finished})
>>> len(finished["a"].token_ids), finished["a"].finish_reason
(3, 'length')
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..generation import sample_next_token
from ..machinery.checks import (
    check_bool,
    check_instance,
    check_int,
    check_str,
    type_error,
    value_error,
)
from ..machinery.language_model import LanguageModel
from .paged_cache import BlockPool, PagedKVCache, block_hashes, recurrent_layers
from .requests import (
    RequestOutput,
    SamplingParams,
    tokens_before_stop,
    tokens_safe_from_stop,
)
from .speculative import sampling_distribution, verify_drafts

__all__ = ["Engine"]


@dataclass(eq=False)
class _Sequence:
    """One request's state inside the engine."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    arrival: int  # admission order: the youngest (largest) is preempted first
    output: list[int] = field(default_factory=list)  # every token generated so far
    emitted: int = 0  # how many of ``output`` have been reported
    generated: int = 0  # tokens the model made: ``output``, an end id, what a stop took back
    table: list[int] = field(default_factory=list)  # its blocks, in position order
    computed: int = 0  # positions whose keys and values are in its blocks
    draft_computed: int = 0  # the same, in the draft model's pages
    keys: list[bytes] = field(default_factory=list)  # prefix keys of its full blocks
    registered: int = 0  # how many of its blocks are in the prefix cache
    ring: int | None = None  # its ring of pages in windowed layers, while it runs
    home: int | None = None  # the block its first one should be (the start of free space)
    finish_reason: str | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def pending(self) -> int:
        """Tokens to feed before the next token can be sampled (1 when decoding)."""
        return len(self.prompt) + len(self.output) - self.computed


class Engine:
    """Serve ``model`` (any family of gpt_components) to many requests at once.

    ``block_size`` positions per page; ``num_blocks`` pages in all (None: enough for
    ``max_running`` sequences of a quarter of the context each, and at least one full one);
    ``max_batch_tokens`` tokens of prompt fed per prefill step (longer prompts go in chunks);
    ``max_running`` sequences decoded together at most; ``prefix_caching`` keeps full blocks
    for reuse (turned off for a model with windowed layers: their pages are rings, which keep
    no prefix; and for a model with recurrent layers, whose state is kept per sequence, in one
    of ``max_running`` state slots, not per block); ``draft_model`` (same vocabulary) with
    ``num_speculative_tokens`` > 0 turns on speculative decoding (refused for a model or draft
    with recurrent layers: a state cannot be rolled back past rejected drafts); ``gather``
    picks the paged cache's read path (``"rows"``, ``"fast"`` or ``"textbook"``, see
    ``paged_cache``). Call ``model.eval()``
    first, as for ``generate``. One thread drives an engine: a server calls ``add_request``,
    ``abort`` and ``step`` from the loop that owns it.
    """

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, block_size: int = 16,
                 num_blocks: int | None = None, max_batch_tokens: int = 256,
                 max_running: int = 32, prefix_caching: bool = True,
                 draft_model: nn.Module | None = None, num_speculative_tokens: int = 0,
                 gather: str = "rows") -> None:
        check_instance("model", model, LanguageModel, "a language model of gpt_components")
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
            raise type_error("tokenizer", f"tokenizer must have a decode method, got "
                                          f"{type(tokenizer).__name__}")
        self.block_size = check_int("block_size", block_size, low=1)
        self.max_batch_tokens = check_int("max_batch_tokens", max_batch_tokens, low=1)
        self.max_running = check_int("max_running", max_running, low=1)
        self.prefix_caching = check_bool("prefix_caching", prefix_caching)
        self.num_speculative_tokens = check_int("num_speculative_tokens",
                                                num_speculative_tokens, low=0)
        context = model.cfg.context_length
        per_context = -(-context // block_size)
        if num_blocks is None:
            num_blocks = max(per_context, max_running * -(-per_context // 4))
        self.num_blocks = check_int("num_blocks", num_blocks, low=1)
        self.draft_model = self._check_draft(draft_model)
        self.pool = BlockPool(num_blocks, block_size)
        # Windowed layers keep a ring of pages per running sequence, a window and a chunk long.
        rings = dict(gather=gather, ring_rows=max_running,
                     max_chunk=max(max_batch_tokens, self.num_speculative_tokens + 2))
        self.cache = PagedKVCache(model, num_blocks, block_size, **rings).probe(model)
        self.draft_cache = None if self.draft_model is None else PagedKVCache(
            self.draft_model, num_blocks, block_size, **rings).probe(self.draft_model)
        # A ring has written over the window's keys of every cached prefix, and a recurrent
        # state is kept only at a sequence's end, not at its blocks' ends: no prefix caching.
        if any(c is not None and (c.ringed or c.stateful)
               for c in (self.cache, self.draft_cache)):
            self.prefix_caching = False
        self._free_rings = list(range(max_running))
        self._requests: dict[str, _Sequence] = {}
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._aborted: list[_Sequence] = []
        self._arrivals = 0
        self._last_prefilled = False
        #: Counters for the curious and the benchmarks: steps run, prompt tokens asked for
        #: and those found in the prefix cache, preemptions, speculative proposals/acceptances.
        self.stats = dict.fromkeys(("steps", "prefill_steps", "prompt_tokens",
                                    "prefix_hit_tokens", "preemptions", "draft_tokens",
                                    "accepted_tokens", "verify_rows"), 0)

    def _check_draft(self, draft: nn.Module | None) -> LanguageModel | None:
        if draft is None:
            if self.num_speculative_tokens:
                raise value_error("num_speculative_tokens", "num_speculative_tokens > 0 needs "
                                                            "a draft_model")
            return None
        check_instance("draft_model", draft, LanguageModel, "a language model of gpt_components")
        if draft.cfg.vocab_size != self.model.cfg.vocab_size:
            raise value_error("draft_model", f"draft_model must share the model's vocabulary "
                                             f"of {self.model.cfg.vocab_size} tokens, got "
                                             f"{draft.cfg.vocab_size}")
        if draft.cfg.context_length < self.model.cfg.context_length:
            raise value_error("draft_model", f"draft_model's context_length="
                                             f"{draft.cfg.context_length} must reach the "
                                             f"model's {self.model.cfg.context_length}")
        if not self.num_speculative_tokens:
            return None
        for name, which in (("model", self.model), ("draft_model", draft)):
            layers = recurrent_layers(which)
            if layers:
                raise value_error("draft_model", f"speculative decoding cannot serve a {name} "
                                                 f"with recurrent layers ({type(which).__name__}"
                                                 f"'s layers {layers} keep a state that the "
                                                 f"rejected drafts would have to be taken out "
                                                 f"of, and a state cannot be rolled back); "
                                                 f"serve it without draft_model")
        return draft

    # -- the public surface -----------------------------------------------------------------

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        """Queue a request; everything is checked here, before it is queued."""
        check_str("request_id", request_id)
        if request_id in self._requests:
            raise value_error("request_id", f"request_id {request_id!r} is already in use")
        check_instance("params", params, SamplingParams, "a SamplingParams")
        if isinstance(prompt_token_ids, (str, bytes)) or not isinstance(prompt_token_ids,
                                                                         Sequence):
            raise type_error("prompt_token_ids", f"prompt_token_ids must be a list of ints, "
                                                 f"got {type(prompt_token_ids).__name__}")
        cfg = self.model.cfg
        prompt = list(prompt_token_ids)
        if not prompt:
            raise value_error("prompt_token_ids", "prompt_token_ids must hold at least one token")
        for token in prompt:
            check_int("prompt_token_ids", token, low=0, high=cfg.vocab_size - 1)
        if len(prompt) >= cfg.context_length:
            raise value_error("prompt_token_ids", f"prompt_token_ids holds {len(prompt)} tokens; "
                                                  f"the model's context_length="
                                                  f"{cfg.context_length} leaves room for none "
                                                  f"to generate")
        if len(prompt) + params.max_tokens > cfg.context_length:
            room = cfg.context_length - len(prompt)
            raise value_error("max_tokens", f"max_tokens must be <= {room} (context_length="
                                            f"{cfg.context_length} minus the prompt's "
                                            f"{len(prompt)} tokens), got {params.max_tokens}")
        if params.top_k is not None and params.top_k > cfg.vocab_size:
            raise value_error("top_k", f"top_k must be <= the model's vocab_size="
                                       f"{cfg.vocab_size}, got {params.top_k}")
        if params.stop and self.tokenizer is None:
            raise value_error("stop", "stop strings need the engine's tokenizer (Engine(..., "
                                      "tokenizer=...)); got stop strings and no tokenizer")
        # The most positions it can hold at once: its whole length, plus the drafted tokens.
        most = len(prompt) + params.max_tokens + self.num_speculative_tokens
        if -(-most // self.block_size) > self.num_blocks:
            raise value_error("max_tokens", f"the prompt's {len(prompt)} tokens and max_tokens="
                                            f"{params.max_tokens} need "
                                            f"{-(-most // self.block_size)} blocks of "
                                            f"{self.block_size}, more than num_blocks="
                                            f"{self.num_blocks}")
        seed = secrets.randbits(63) if params.seed is None else params.seed
        sequence = _Sequence(request_id, prompt, params, torch.Generator().manual_seed(seed),
                             self._arrivals)
        self._arrivals += 1
        self._requests[request_id] = sequence
        self._waiting.append(sequence)

    def abort(self, request_id: str) -> None:
        """End a request now and free its pages; the next step reports it finished with
        reason ``"abort"``. An unknown or already finished id is ignored (it may have
        finished in the meantime)."""
        sequence = self._requests.get(request_id)
        if sequence is None or sequence.finish_reason is not None:
            return
        if sequence in self._waiting:
            self._waiting.remove(sequence)
        if sequence in self._running:
            self._running.remove(sequence)
        self._free(sequence)
        sequence.finish_reason = "abort"
        self._aborted.append(sequence)

    def has_unfinished(self) -> bool:
        """Whether a request is queued, running, or has an end not yet reported."""
        return bool(self._requests)

    def step(self) -> list[RequestOutput]:
        """One scheduling step: one forward pass (a prefill or a decode), then the outputs of
        every request that got tokens or finished."""
        touched = list(self._aborted)
        self._aborted.clear()
        with torch.no_grad():
            touched += self._run_step()
        outputs = []
        for sequence in dict.fromkeys(touched):  # each once, in order
            output = self._output(sequence)
            if output is not None:
                outputs.append(output)
        return outputs

    def generate(self, prompts: list[list[int]],
                 params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run ``prompts`` to completion together; each one's generated tokens, in order.
        ``params`` is one ``SamplingParams`` for all, or one per prompt."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise value_error("params", f"params must be one SamplingParams or one per prompt "
                                        f"({len(prompts)}), got {len(params)}")
        ids = [f"generate-{self._arrivals}-{i}" for i in range(len(prompts))]
        for request_id, prompt, p in zip(ids, prompts, params, strict=True):
            self.add_request(request_id, prompt, p)
        results: dict[str, list[int]] = {}
        while self.has_unfinished():
            for output in self.step():
                if output.finished:
                    results[output.request_id] = output.token_ids
        return [results[i] for i in ids]

    def memory(self) -> dict[str, int]:
        """What the pages hold now: blocks held by running sequences, the positions they have
        computed (their keys and values), and how many sequences run."""
        return {"held_blocks": self.num_blocks - self.pool.num_free,
                "held_positions": (self.num_blocks - self.pool.num_free) * self.block_size,
                "computed_positions": sum(s.computed for s in self._running),
                "running": len(self._running)}

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (cached prefixes among them)."""
        return self.pool.num_free

    # -- scheduling -------------------------------------------------------------------------

    def _run_step(self) -> list[_Sequence]:
        """Pick the step's rows and run them; the sequences touched."""
        if not self._running and not self._waiting:
            return []
        self.stats["steps"] += 1
        if self.cache.packable and self.draft_model is None:
            return self._mixed_step()
        decoding = [s for s in self._running if s.pending == 1]
        to_prefill = bool(self._waiting) or any(s.pending > 1 for s in self._running)
        # Prefill and decode take turns while both have work: a long prompt's chunks cannot
        # stall the running sequences' next tokens by more than one step each.
        if to_prefill and not (decoding and self._last_prefilled):
            rows = self._schedule_prefill()
            if rows:
                self._last_prefilled = True
                self.stats["prefill_steps"] += 1
                return self._forward(rows, draft_too=self.draft_model is not None)
        self._last_prefilled = False
        rows = self._schedule_decode()
        if not rows:
            return []
        if self.draft_model is not None:
            return self._speculate(rows)
        return self._forward(rows, draft_too=False)

    def _mixed_step(self) -> list[_Sequence]:
        """A step for a model whose rows pack (``PagedKVCache.packable``: every attention
        hands the cache its queries): every decoding sequence's next token and, beside them,
        up to ``max_batch_tokens`` prompt tokens shared out among the prompts in hand
        (``_schedule_chunks``), in one forward pass. Nothing is padded, so nothing forces
        prefill and decode apart: a long prompt's chunk delays the others' next token by one
        step's work, and no step decodes alone while prompts wait."""
        decode = self._schedule_decode()
        # Blocks for a prompt's chunk are taken from other sequences only if nothing else
        # can run (a sequence preempted now could not be taken back out of the decode rows).
        chunks = self._schedule_chunks(may_preempt=not decode)
        rows = [(s, count) for s, count in decode + chunks if s in self._running]
        if not rows:
            return []
        if chunks:
            self.stats["prefill_steps"] += 1
        return self._forward(rows, draft_too=False)

    def _schedule_chunks(self, may_preempt: bool) -> list[tuple[_Sequence, int]]:
        """Prompt chunks for a mixed step: ``max_batch_tokens`` shared out among running
        sequences mid-prompt (oldest first) and then waiting ones (admitted in order while
        ``max_running`` and the free blocks allow), as evenly as their lengths allow (each
        gets what it still needs or an equal share, whichever is less: short prompts finish
        at once, long ones go in chunks)."""
        room = self.max_running - len(self._running)
        candidates = sorted((s for s in self._running if s.pending > 1), key=lambda s: s.arrival)
        candidates += list(self._waiting)[:max(0, room)]
        candidates = candidates[:self.max_batch_tokens]  # a token each at least
        shares = _share(self._wanted(candidates), self.max_batch_tokens)
        rows = []
        for sequence, share in zip(candidates, shares, strict=True):
            if sequence in self._running:
                if self._reserve(sequence, sequence.computed + share, may_preempt):
                    rows.append((sequence, share))
                continue
            if self._fits(sequence) and self._waiting and self._waiting[0] is sequence \
                    and self._admit(sequence, share):
                self._waiting.popleft()
                self._running.append(sequence)
                rows.append((sequence, min(sequence.pending, share)))
            else:
                break  # the queue is served in order: none admitted past one that waits
        return rows

    def _fits(self, sequence: _Sequence) -> bool:
        """Whether a waiting sequence's whole prompt fits in the free blocks beside what the
        running ones are promised (or nothing runs): one admitted beyond that would be
        preempted before long, and its prompt computed twice."""
        need = -(-len(sequence.tokens) // self.block_size)
        return not self._running or self._promised() + need <= self.pool.num_free

    def _promised(self) -> int:
        """Blocks the running sequences will take soon: what they still need for the tokens
        they have (a prompt's rest), and one each to grow into."""
        return sum(max(0, -(-len(s.tokens) // self.block_size) - len(s.table)) + 1
                   for s in self._running)

    def _wanted(self, sequences: list[_Sequence]) -> list[int]:
        """The prompt tokens each sequence still has to feed (a waiting one's, past the
        blocks the prefix cache holds for it)."""
        wanted = []
        for sequence in sequences:
            if sequence in self._running:
                wanted.append(sequence.pending)
                continue
            wanted.append(len(sequence.tokens) - len(self._cached_prefix(sequence))
                          * self.block_size)
        return wanted

    def _cached_prefix(self, sequence: _Sequence) -> list[bytes]:
        """The keys of a waiting sequence's leading blocks found in the prefix cache (none
        without prefix caching). Never its last token's block: one token at least must be
        fed, for the logits of the next."""
        keys = []
        if self.prefix_caching:
            for key in block_hashes(sequence.tokens[:-1], self.block_size):
                if not self.pool.is_cached(key):
                    break
                keys.append(key)
        return keys

    def _schedule_prefill(self) -> list[tuple[_Sequence, int]]:
        """Rows of prompt chunks: running sequences mid-prompt first (oldest first), then
        waiting ones, admitted in order while ``max_running`` and the free blocks allow.

        The rows are padded to the widest, so the step computes ``rows * width`` tokens,
        at most ``max_batch_tokens``. Few wide rows or many narrow ones: the step takes the
        most rows whose chunks still add up to at least half of the most real tokens any
        choice gives. So a short prompt behind a long one shares the step with a chunk of
        it instead of waiting for all of it, and short prompts go many to a step.
        """
        room = self.max_running - len(self._running)
        candidates = sorted((s for s in self._running if s.pending > 1), key=lambda s: s.arrival)
        candidates += list(self._waiting)[:max(0, room)]
        if not candidates:
            return []
        budget = self.max_batch_tokens
        real = [sum(min(s.pending, budget // r) for s in candidates[:r])
                for r in range(1, min(len(candidates), budget) + 1)]
        count = max(r + 1 for r, tokens in enumerate(real) if 2 * tokens >= max(real))
        width = budget // count
        if self.cache.stateful:
            # Equal chunks, so no row is padded: a padding token would write into a recurrent
            # state. The shortest prompt left sets the width; it leaves the prefill soon.
            width = min([width] + [s.pending for s in candidates[:count]])
        rows = []
        for sequence in candidates[:count]:
            if sequence in self._running:
                chunk = min(sequence.pending, width)
                if sequence.pending > 1 and self._reserve(sequence, sequence.computed + chunk):
                    rows.append((sequence, chunk))
            elif self._waiting and self._waiting[0] is sequence and self._admit(sequence, width):
                self._waiting.popleft()
                self._running.append(sequence)
                rows.append((sequence, min(sequence.pending, width)))
            else:
                break  # the queue is served in order: none admitted past one that waits
        return [(s, chunk) for s, chunk in rows if s in self._running]

    def _schedule_decode(self) -> list[tuple[_Sequence, int]]:
        """Every decoding sequence, oldest first, as long as blocks can be found for it."""
        rows = []
        extra = self.num_speculative_tokens
        for sequence in sorted((s for s in self._running if s.pending == 1),
                               key=lambda s: s.arrival):
            if sequence in self._running and self._reserve(sequence,
                                                           sequence.computed + 1 + extra):
                rows.append((sequence, 1))
        return rows

    def _admit(self, sequence: _Sequence, budget: int) -> bool:
        """Give a waiting sequence its cached prefix blocks and blocks for its first chunk,
        if enough are free; False (nothing taken) otherwise."""
        keys = self._cached_prefix(sequence)
        start = len(keys) * self.block_size
        count = min(len(sequence.tokens) - start, budget)
        needed = -(-(start + count) // self.block_size) - len(keys)
        freed_by_hits = sum(1 for key in keys if self.pool.ref_counts[
            self.pool.cached_block(key)] == 0)  # taking them takes them off the free list
        if needed > self.pool.num_free - freed_by_hits:
            return False
        sequence.table = [self.pool.take_cached(key) for key in keys]
        if not sequence.table:  # a home: free blocks it can grow into, one after the other
            sequence.home = self.pool.open_run(self._extent(sequence), self._homes())
        self._allocate(sequence, needed)
        sequence.ring = self._free_rings.pop()
        sequence.keys, sequence.registered = list(keys), len(keys)
        sequence.computed = sequence.draft_computed = start
        if not sequence.output:
            self.stats["prompt_tokens"] += len(sequence.prompt)
            self.stats["prefix_hit_tokens"] += start
        return True

    def _reserve(self, sequence: _Sequence, positions: int, may_preempt: bool = True) -> bool:
        """Blocks for ``positions`` positions of a running sequence, preempting the youngest
        running sequences if none are free (unless not ``may_preempt``: then False, nothing
        taken); False if it was itself preempted."""
        needed = -(-positions // self.block_size) - len(sequence.table)
        if not may_preempt and needed > self.pool.num_free:
            return False
        while needed > self.pool.num_free:
            victim = max(self._running, key=lambda s: s.arrival)
            self._preempt(victim)
            if victim is sequence:
                return False
        self._allocate(sequence, needed)
        return True

    def _allocate(self, sequence: _Sequence, count: int) -> None:
        """``count`` more blocks for ``sequence``, each the one after its last where free (a
        row whose blocks follow one another is read in place by attention, not gathered)."""
        for _ in range(count):
            prefer = sequence.table[-1] + 1 if sequence.table else sequence.home
            sequence.table.append(self.pool.allocate(prefer))

    def _extent(self, sequence: _Sequence) -> int:
        """The most blocks ``sequence`` can come to hold."""
        most = len(sequence.prompt) + sequence.params.max_tokens + self.num_speculative_tokens
        return -(-most // self.block_size)

    def _homes(self) -> list[tuple[int, int]]:
        """The blocks the running sequences may grow into: from each one's first block."""
        return [(s.table[0], s.table[0] + self._extent(s)) for s in self._running if s.table]

    def _preempt(self, sequence: _Sequence) -> None:
        """Send a running sequence back to wait, its blocks freed; it resumes by recomputing
        (its tokens and its generator are kept)."""
        self._running.remove(sequence)
        self._free(sequence)
        self._waiting.appendleft(sequence)  # the youngest goes first: the oldest ends in front
        self.stats["preemptions"] += 1

    def _free(self, sequence: _Sequence) -> None:
        for block in sequence.table:
            self.pool.release(block)
        if sequence.ring is not None:
            self._free_rings.append(sequence.ring)
            sequence.ring = None
        sequence.table, sequence.keys, sequence.registered = [], [], 0
        sequence.computed = sequence.draft_computed = 0
        sequence.home = None

    # -- running ----------------------------------------------------------------------------

    def _hidden(self, model: LanguageModel, cache: PagedKVCache,
                rows: list[tuple[_Sequence, list[int], int]]) -> torch.Tensor:
        """One forward pass of ``model`` over rows ``(sequence, ids, start)``: the final
        hidden states (B, T, emb), each row's padded on the right.

        Where every layer of the model hands the cache its queries (``cache.packable``), the
        rows go in packed, one after the other in a single row of the input: no padding
        token is computed. (Unless they would pass the context, which bounds one row.)
        Otherwise each row is padded to the longest."""
        counts = [len(ids) for _, ids, _ in rows]
        width = max(counts)
        device = model.tok_emb.weight.device
        packed = cache.packable and len(rows) > 1 and sum(counts) <= model.cfg.context_length
        if packed:
            idx = torch.tensor([[t for _, ids, _ in rows for t in ids]], device=device)
        else:
            idx = torch.tensor([ids + [0] * (width - len(ids)) for _, ids, _ in rows],
                               device=device)  # (B, T)
        cache.prepare([s.table for s, _, _ in rows], [start for _, _, start in rows], counts,
                      [s.ring for s, _, _ in rows], packed=packed)
        hidden = model.hidden_states(idx, kv_cache=cache)
        if not packed:
            return hidden
        real = torch.arange(width, device=device)[None, :] < torch.tensor(
            counts, device=device)[:, None]  # (B, T), row after row as packed
        rows_hidden = hidden.new_zeros(len(rows), width, hidden.shape[-1])
        rows_hidden[real] = hidden[0]
        return rows_hidden

    def _forward(self, rows: list[tuple[_Sequence, int]], draft_too: bool) -> list[_Sequence]:
        """Feed each row's next ``count`` tokens; sample for the rows that reach their end."""
        feeds = [(s, s.tokens[s.computed:s.computed + count], s.computed) for s, count in rows]
        hidden = self._hidden(self.model, self.cache, feeds)
        if draft_too:
            self._hidden(self.draft_model, self.draft_cache, feeds)
        last = _last_positions(hidden, feeds)
        # Sampled on the CPU, where each request's generator lives (as generate's would).
        logits = self.model.out_head(last).cpu()  # (B, vocab)
        for b, (sequence, ids, _) in enumerate(feeds):
            sequence.computed += len(ids)
            if draft_too:
                sequence.draft_computed = sequence.computed
            if sequence.pending == 0:
                p = sequence.params
                token = int(sample_next_token(logits[b:b + 1], p.temperature, p.top_k, p.top_p,
                                              sequence.generator))
                self._register(sequence)
                self._append(sequence, [token])
            else:
                self._register(sequence)
        return [s for s, _ in rows]

    def _speculate(self, rows: list[tuple[_Sequence, int]]) -> list[_Sequence]:
        """A decode step with a draft: each row drafts up to ``k`` tokens (one draft forward
        per token, every row together), then the model scores them all in one forward."""
        sequences = [s for s, _ in rows]
        ks = {s: min(self.num_speculative_tokens, s.params.max_tokens - len(s.output) - 1)
              for s in sequences}
        drafts: dict[_Sequence, list[int]] = {s: [] for s in sequences}
        q: dict[_Sequence, list[torch.Tensor]] = {s: [] for s in sequences}
        for j in range(max(ks.values())):
            active = [s for s in sequences if ks[s] > j]
            # The draft's unfed positions: of the tokens (one, or two after a step that kept
            # every drafted token) and then of its own drafts so far.
            feeds = [(s, (s.tokens + drafts[s])[s.draft_computed:], s.draft_computed)
                     for s in active]
            hidden = self._hidden(self.draft_model, self.draft_cache, feeds)
            last = _last_positions(hidden, feeds)
            logits = self.draft_model.out_head(last).cpu()  # (B, vocab)
            for b, (s, ids, _) in enumerate(feeds):
                s.draft_computed += len(ids)
                p = s.params
                dist = sampling_distribution(logits[b], p.temperature, p.top_k, p.top_p)
                token = int(dist.argmax()) if p.greedy else int(
                    torch.multinomial(dist, 1, generator=s.generator))
                drafts[s].append(token)
                q[s].append(dist)
        feeds = [(s, s.tokens[s.computed:] + drafts[s], s.computed) for s in sequences]
        logits = self.model.out_head(self._hidden(self.model, self.cache, feeds)).cpu()  # (B, T, V)
        for b, s in enumerate(sequences):
            p = s.params
            accepted = verify_drafts(logits[b], drafts[s], q[s], p.temperature, p.top_k, p.top_p,
                                     s.generator)
            self.stats["verify_rows"] += 1
            self.stats["draft_tokens"] += len(drafts[s])
            self.stats["accepted_tokens"] += len(accepted) - 1
            s.computed += len(accepted)  # the fed last token and the kept drafts
            s.draft_computed = min(s.draft_computed, s.computed)
            self._register(s)
            self._append(s, accepted)
        return sequences

    def _register(self, sequence: _Sequence) -> None:
        """Put the sequence's newly full, computed blocks in the prefix cache."""
        if not self.prefix_caching:
            return
        done = min(sequence.computed, sequence.draft_computed) if self.draft_model else \
            sequence.computed
        full = min(done, len(sequence.tokens)) // self.block_size
        if full > len(sequence.keys):
            sequence.keys = block_hashes(sequence.tokens[:full * self.block_size],
                                         self.block_size)
        for index in range(sequence.registered, full):
            self.pool.register(sequence.table[index], sequence.keys[index])
        sequence.registered = max(sequence.registered, full)

    # -- tokens out -------------------------------------------------------------------------

    def _append(self, sequence: _Sequence, tokens: list[int]) -> None:
        """Add new tokens one by one, ending the sequence at a stop token, a stop string or
        ``max_tokens``; a finished sequence leaves the batch and frees its blocks."""
        p = sequence.params
        for token in tokens:
            sequence.generated += 1
            if token in p.stop_token_ids:
                sequence.finish_reason = "stop"
                break
            sequence.output.append(token)
            if p.stop and self._cut_at_stop(sequence):
                sequence.finish_reason = "stop"
                break
            if len(sequence.output) >= p.max_tokens:
                sequence.finish_reason = "length"
                break
        if sequence.finish_reason is not None:
            self._running.remove(sequence)
            self._free(sequence)

    def _cut_at_stop(self, sequence: _Sequence) -> bool:
        """If the text holds a stop string, cut the tokens before the one it begins in."""
        keep = tokens_before_stop(sequence.output, sequence.params.stop, self.tokenizer)
        if keep is None:
            return False
        sequence.output = sequence.output[:max(keep, sequence.emitted)]
        return True

    def _safe_to_emit(self, sequence: _Sequence) -> int:
        """How many tokens can be reported: all once finished; before that, those that no
        stop string still being written can take back."""
        if sequence.finish_reason is not None or not sequence.params.stop:
            return len(sequence.output)
        return max(sequence.emitted, tokens_safe_from_stop(sequence.output, sequence.params.stop,
                                                           self.tokenizer))

    def _output(self, sequence: _Sequence) -> RequestOutput | None:
        """The sequence's news for this step (None if it has none)."""
        # An aborted request reports no more tokens (its client has gone).
        ready = sequence.emitted if sequence.finish_reason == "abort" else \
            self._safe_to_emit(sequence)
        finished = sequence.finish_reason is not None
        if ready == sequence.emitted and not finished:
            return None
        new = sequence.output[sequence.emitted:ready]
        sequence.emitted = ready
        if finished:
            del self._requests[sequence.request_id]
        return RequestOutput(sequence.request_id, new, list(sequence.output[:ready]), finished,
                             sequence.finish_reason, sequence.generated)


def _share(wanted: list[int], budget: int) -> list[int]:
    """``budget`` tokens shared out: each gets ``min(wanted, level)``, the level as high as
    the budget allows (water filling: the smallest wants are met first, the rest split what
    is left evenly)."""
    shares = [0] * len(wanted)
    left = budget
    for rank, i in enumerate(sorted(range(len(wanted)), key=wanted.__getitem__)):
        shares[i] = min(wanted[i], left // (len(wanted) - rank))
        left -= shares[i]
    return shares


def _last_positions(hidden: torch.Tensor, feeds: list) -> torch.Tensor:
    """Each row's hidden state at its last fed token, (B, emb)."""
    ends = torch.tensor([len(ids) - 1 for _, ids, _ in feeds], device=hidden.device)
    return hidden[torch.arange(len(feeds), device=hidden.device), ends]


