"""Benchmarks: BPETokenizer against tiktoken on tinyshakespeare (1.1 MB), and training time.

Encoding: GPT-2's merges in both, on the same text, so the ids are equal (the spec proves it).
"cold" starts every round with an empty chunk cache (a fresh ``BPETokenizer.gpt2()``, built
outside the timer); "warm" encodes text whose chunks are all cached, so it times only the regex
split and the dict lookups. Each run stores its throughput in ``extra_info["MB/s"]``.

Training: vocabulary 1,000 on the-verdict (20 KB) and 5,000 on tinyshakespeare (one round).
CPU only: nothing here touches a device.
"""

from __future__ import annotations

import pytest

from gpt_components.bpe import BPETokenizer
from gpt_components.machinery.resources import load_text
from gpt_components.tokenizers import gpt2_tokenizer


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text("tinyshakespeare.txt")


def _record_throughput(benchmark, text: str) -> None:
    megabytes = len(text.encode("utf-8")) / 1e6
    benchmark.extra_info["MB/s"] = round(megabytes / benchmark.stats.stats.mean, 2)


def test_encode_tiktoken(benchmark, shakespeare):
    tok = gpt2_tokenizer()
    ids = benchmark.pedantic(tok.encode, args=(shakespeare,), rounds=5, warmup_rounds=1)
    _record_throughput(benchmark, shakespeare)
    assert len(ids) == 338_025


def test_encode_bpe_tokenizer_cold_cache(benchmark, shakespeare):
    def fresh():
        return (BPETokenizer.gpt2(), shakespeare), {}

    ids = benchmark.pedantic(BPETokenizer.encode, setup=fresh, rounds=5)
    _record_throughput(benchmark, shakespeare)
    assert len(ids) == 338_025


def test_encode_bpe_tokenizer_warm_cache(benchmark, shakespeare):
    tok = BPETokenizer.gpt2()
    ids = benchmark.pedantic(tok.encode, args=(shakespeare,), rounds=5, warmup_rounds=1)
    _record_throughput(benchmark, shakespeare)
    assert len(ids) == 338_025


def test_train_1000_on_the_verdict(benchmark):
    text = load_text("the-verdict.txt")
    tok = benchmark.pedantic(BPETokenizer.train, args=(text, 1000), rounds=3)
    assert tok.n_vocab == 1000


def test_train_5000_on_tinyshakespeare(benchmark, shakespeare):
    tok = benchmark.pedantic(BPETokenizer.train, args=(shakespeare, 5000), rounds=1)
    assert tok.n_vocab == 5000
