"""Learning byte-pair merges (chapter 2's BPE, its training half), with incremental pair counts.

The textbook algorithm recounts every adjacent pair of the corpus after each merge: O(merges x
corpus). ``learn_merges`` counts once, then after each merge revisits only the pre-tokens that
hold the merged pair and corrects the counts of the pairs around it, with a heap to find the next
most frequent pair. Pre-tokens are counted once each (``"the"`` appearing 5,000 times is one word
of weight 5,000). ``BPETokenizer.train`` (in ``bpe``) calls it; the spec checks every merge
against a naive recount. Exports ``learn_merges`` and ``merge_word``.

>>> vocab, merges = learn_merges({"aaab": 2, "ab": 1}, n_ordinary=258, min_frequency=2)
>>> [(vocab[left], vocab[right]) for left, right in merges]
[(b'a', b'a'), (b'a', b'b')]
>>> vocab[256:]
[b'aa', b'ab']
>>> merge_word([97, 97, 97, 98], (97, 97), 256)
[256, 97, 98]
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence

from .machinery.checks import check_instance, check_int, type_error

__all__ = ["learn_merges", "merge_word"]


def learn_merges(
    chunk_counts: Mapping[str, int], n_ordinary: int, min_frequency: int
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Byte-level BPE training over unique chunks weighted by their counts.

    Pair counts are updated incrementally: a merge only revisits the chunks that hold the merged
    pair (found through ``where``), and a max-heap keyed by ``(-count, left, right)`` finds the
    next pair. Heap entries can go stale: every pair whose count grows is pushed again with its
    new count, so some entry of each pair never under-states it, and a popped entry that
    over-states it is pushed back with the current count. The first up-to-date entry popped is
    therefore the true maximum.
    """
    check_instance("chunk_counts", chunk_counts, Mapping, "a mapping str -> int count")
    for chunk, count in chunk_counts.items():
        if not isinstance(chunk, str) or isinstance(count, bool) or not isinstance(count, int):
            raise type_error("chunk_counts", f"chunk_counts must map str chunks to int counts, "
                                             f"got the entry {chunk!r}: {count!r}")
    check_int("n_ordinary", n_ordinary, low=256)
    check_int("min_frequency", min_frequency, low=1)
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    counts = list(chunk_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += count
            where[pair].add(w)
    heap = [(-count, *pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    vocab = [bytes([byte]) for byte in range(256)]
    id_of = {token: rank for rank, token in enumerate(vocab)}
    merges: list[tuple[int, int]] = []
    while len(vocab) < n_ordinary and heap:
        negative, left, right = heapq.heappop(heap)
        count = pair_counts.get((left, right), 0)
        if count != -negative:
            if 0 < count < -negative:
                heapq.heappush(heap, (-count, left, right))
            continue
        if count < min_frequency:
            break
        joined = vocab[left] + vocab[right]
        if joined not in id_of:
            # The same bytes can come from two different pairs; they share one token.
            id_of[joined] = len(vocab)
            vocab.append(joined)
        merges.append((left, right))
        _apply_merge((left, right), id_of[joined], words, counts, pair_counts, where, heap)
    return vocab, merges


def _apply_merge(pair, new_id, words, counts, pair_counts, where, heap) -> None:
    deltas: dict[tuple[int, int], int] = defaultdict(int)
    for w in where.pop(pair):
        word = words[w]
        merged = merge_word(word, pair, new_id)
        if len(merged) == len(word):
            continue  # a stale index entry: an earlier merge already consumed this pair here
        count = counts[w]
        for old in itertools.pairwise(word):
            deltas[old] -= count
        for new in itertools.pairwise(merged):
            deltas[new] += count
            where[new].add(w)
        words[w] = merged
    for changed, delta in deltas.items():
        total = pair_counts[changed] + delta
        if total:
            pair_counts[changed] = total
        else:
            del pair_counts[changed]
        if delta > 0:
            heapq.heappush(heap, (-total, *changed))


def merge_word(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair``, left to right and without overlap, by ``new_id``."""
    if not isinstance(word, Sequence) or isinstance(word, (str, bytes)):
        raise type_error("word", f"word must be a list of int ids, got {type(word).__name__}")
    if not (isinstance(pair, Sequence) and not isinstance(pair, (str, bytes)) and len(pair) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)):
        raise type_error("pair", f"pair must be a pair of int ids, got {pair!r}")
    check_int("new_id", new_id, low=0)
    left, right = pair
    merged = []
    i = 0
    while i < len(word):
        if word[i] == left and i + 1 < len(word) and word[i + 1] == right:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged
