"""Spec of the book's bonus-chapter names: its Llama 3 / Qwen3 config dicts, models, RoPE tables."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gpt_components.model import count_parameters
from gpt_components.modern import (
    LLAMA32_CONFIG_1B,
    QWEN_CONFIG_06_B,
    Llama3Model,
    LlamaConfig,
    Qwen3Config,
    Qwen3Model,
    compute_rope_params,
)
from spec.strategies import seeds

pytestmark = pytest.mark.modern


def test_the_books_published_configs_count_the_books_parameters():
    # The book's notebooks print the random model's total (its head is its own matrix) and the
    # unique count of the released weights, whose head is the embedding.
    with torch.device("meta"):
        llama, qwen = Llama3Model(LLAMA32_CONFIG_1B), Qwen3Model(QWEN_CONFIG_06_B)
    assert count_parameters(llama) == 1_498_482_688
    assert count_parameters(llama) - llama.out_head.weight.numel() == 1_235_814_400
    assert count_parameters(qwen) == 751_632_384
    assert count_parameters(qwen) - qwen.out_head.weight.numel() == 596_049_920
    assert llama.cfg == LlamaConfig.from_name("llama3.2-1b", tie_weights=False)
    assert qwen.cfg == Qwen3Config.from_name("qwen3-0.6b", tie_weights=False)
    assert llama.tok_emb.weight.dtype == qwen.tok_emb.weight.dtype == torch.bfloat16


def books_draws(cfg, seed, attention_order):
    """The book's construction written out as plain layers in its order, seeded; by our names."""
    torch.manual_seed(seed)
    e, hd = cfg["emb_dim"], cfg.get("head_dim") or cfg["emb_dim"] // cfg["n_heads"]
    q, kv = cfg["n_heads"] * hd, cfg["n_kv_groups"] * hd
    shapes = {"W_query": (e, q), "W_key": (e, kv), "W_value": (e, kv), "out_proj": (q, e)}
    layers = {"tok_emb": nn.Embedding(cfg["vocab_size"], e)}
    for i in range(cfg["n_layers"]):
        for name in attention_order:
            layers[f"trf_blocks.{i}.att.{name}"] = nn.Linear(*shapes[name], bias=False)
        for name, shape in (("fc1", (e, cfg["hidden_dim"])), ("fc2", (e, cfg["hidden_dim"])),
                            ("fc3", (cfg["hidden_dim"], e))):
            layers[f"trf_blocks.{i}.ff.{name}"] = nn.Linear(*shape, bias=False)
    layers["out_head"] = nn.Linear(e, cfg["vocab_size"], bias=False)
    return {f"{name}.weight": layer.weight for name, layer in layers.items()}, torch.rand(1)


@settings(max_examples=10)
@given(seed=seeds, family=st.sampled_from(["llama3", "qwen3"]), n_kv=st.sampled_from([1, 2]),
       n_layers=st.integers(1, 2), head_dim=st.sampled_from([None, 6]))
def test_a_seeded_book_model_draws_the_books_weights_in_the_books_order(
        seed, family, n_kv, n_layers, head_dim):
    cfg = {"vocab_size": 40, "context_length": 16, "emb_dim": 16, "n_heads": 4,
           "n_layers": n_layers, "hidden_dim": 24, "n_kv_groups": n_kv, "rope_base": 1e4,
           "dtype": torch.float32}
    if family == "qwen3":
        cfg.update(head_dim=head_dim, qk_norm=True)
        build, order = Qwen3Model, ("W_query", "W_key", "W_value", "out_proj")
    else:
        build, order = Llama3Model, ("W_key", "W_value", "W_query", "out_proj")
    expected, after = books_draws(cfg, seed, order)
    torch.manual_seed(seed)
    model = build(cfg)
    assert torch.equal(torch.rand(1), after)  # the generator is left where the book leaves it
    state = model.state_dict()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    for name in set(state) - set(expected):  # every norm: ones
        assert torch.equal(state[name], torch.ones_like(state[name])), name


def test_the_books_shared_test_dict_builds_each_family_and_unknown_keys_are_refused():
    # The book's context-limit test passes one dict to every family; each reads its own keys.
    shared = {"vocab_size": 32, "context_length": 8, "emb_dim": 16, "n_heads": 4,
              "n_layers": 2, "hidden_dim": 32, "drop_rate": 0.0, "qkv_bias": False,
              "head_dim": 4, "n_kv_groups": 2, "qk_norm": True, "rope_base": 1e6,
              "rope_freq": None, "dtype": torch.float32, "num_experts": 0}
    assert not Llama3Model(shared).cfg.qk_norm  # Llama 3 has none, whatever the dict says
    assert Qwen3Model(shared).cfg.qk_norm
    moe = Qwen3Model({**shared, "num_experts": 4, "num_experts_per_tok": 2,
                      "moe_intermediate_size": 32})
    assert (moe.cfg.n_experts, moe.cfg.n_experts_per_token, moe.cfg.moe_hidden_dim) == (4, 2, 32)
    with pytest.raises(TypeError, match=r"^cfg has keys the book's models do not read: \['nkv'\]"):
        Llama3Model({**shared, "nkv": 2})
    with pytest.raises(ValueError, match=r"^cfg must give \['n_kv_groups'\]$"):
        Qwen3Model({k: v for k, v in shared.items() if k != "n_kv_groups"})


def test_compute_rope_params_gives_transformers_llama3_tables():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    # The book's test_rope settings, at a shorter context.
    freq = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_context_length": 8192}
    cos, sin = compute_rope_params(head_dim=16, theta_base=500_000, context_length=256,
                                   freq_config=freq)
    config = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=8192,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192})
    x = torch.zeros(1, 4, 256, 16)
    ref_cos, ref_sin = modeling_llama.LlamaRotaryEmbedding(config)(x, torch.arange(256)[None])
    assert cos.dtype == torch.float32 and cos.shape == (256, 16)
    torch.testing.assert_close(cos, ref_cos[0])  # float32 tolerances, as the book's test uses
    torch.testing.assert_close(sin, ref_sin[0])
