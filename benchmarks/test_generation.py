"""Generation (chapter 5): tokens per second with and without the KV cache, and transformers'.

GPT-2 small (124M, OpenAI's layout: qkv biases, tied head) with random weights, one 16-token
prompt, 200 new tokens, greedy. The same weights run in ``GPTModel`` (via
``load_hf_state_dict``) and in ``transformers.GPT2LMHeadModel.generate`` (its own cache on).
Each result stores ``tokens_per_s`` in ``extra_info``. Targets: cached >= 5x uncached on CPU;
cached >= transformers on CPU. Slow on a CPU: rounds are fixed and few.
"""

from __future__ import annotations

import pytest
import torch

from gpt_components.generation import generate
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.weights import config_from_hf, load_hf_state_dict

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 200
PROMPT_TOKENS = 16
ROUNDS = {"cached": 3, "uncached": 1, "transformers": 3}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """transformers' GPT-2 small with random weights, and the same weights in a GPTModel."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ours = GPTModel(config_from_hf(hf.config, drop_rate=0.0))
    load_hf_state_dict(ours, hf.state_dict())
    assert ours.cfg == GPTConfig.from_name("gpt2-small", qkv_bias=True, tie_weights=True,
                                           drop_rate=0.0)
    return {"ours": ours.eval(), "transformers": hf}


def _prompt(device: torch.device) -> torch.Tensor:
    return torch.randint(0, 50257, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1)
                         ).to(device)


def _record(benchmark, out: torch.Tensor) -> None:
    assert out.shape == (1, PROMPT_TOKENS + NEW_TOKENS)
    benchmark.extra_info["new_tokens"] = NEW_TOKENS
    benchmark.extra_info["tokens_per_s"] = NEW_TOKENS / benchmark.stats.stats.mean


@pytest.mark.parametrize("mode", ["cached", "uncached"])
def test_generate_tokens_per_second(benchmark, run_synced, device, models, mode):
    model = models["ours"].to(device)
    idx = _prompt(device)
    out = run_synced(generate, model, idx, NEW_TOKENS, use_cache=mode == "cached",
                     rounds=ROUNDS[mode], warmup_rounds=1 if mode == "cached" else 0)
    _record(benchmark, out)


def test_transformers_generate_tokens_per_second(benchmark, run_synced, device, models):
    model = models["transformers"].to(device)
    idx = _prompt(device)

    def hf_generate() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                  use_cache=True, pad_token_id=50256)

    out = run_synced(hf_generate, rounds=ROUNDS["transformers"])
    _record(benchmark, out)
