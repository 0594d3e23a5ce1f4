"""Properties of the mixture-of-experts feed-forward (Qwen3-MoE's and DeepSeek-V3's routing).

The reference runs every expert on every token (the SwiGLU written out with explicit matrix
products and ``x * sigmoid(x)``) and weights the outputs by a sparse gate computed here, token by
token from sorted scores, not with the module's ``topk``. The auxiliary loss is compared with
``transformers``' own ``load_balancing_loss_func``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from gpt_components.modern.moe import MoEFeedForward, Router, load_balancing_loss
from spec.strategies import generator, seeds

pytestmark = pytest.mark.modern

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@st.composite
def moe_setups(draw, **fixed):
    """A float64 ``MoEFeedForward`` with every weight drawn, and an input [B, T, emb]."""
    scoring = fixed.pop("scoring", None) or draw(st.sampled_from(["softmax", "sigmoid"]))
    n_group = draw(st.sampled_from([1, 2])) if scoring == "sigmoid" else 1
    n_experts = fixed.pop("n_experts", None) or n_group * draw(st.integers(2, 4))
    topk_group = draw(st.integers(1, n_group))
    kwargs = {
        "emb_dim": draw(st.sampled_from([4, 8])),
        "hidden_dim": draw(st.sampled_from([3, 6])),
        "n_experts": n_experts,
        "top_k": draw(st.integers(1, topk_group * n_experts // n_group)),
        "scoring": scoring,
        "norm_topk_prob": draw(st.booleans()),
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": draw(st.sampled_from([1.0, 2.5])),
        "n_shared_experts": draw(st.integers(0, 2)) if scoring == "sigmoid" else 0,
    }
    kwargs.update(fixed)
    moe = MoEFeedForward(**kwargs).to(F64).requires_grad_(False)
    g = generator(draw(seeds))
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        if scoring == "sigmoid":
            moe.gate.score_bias.copy_(torch.randn(n_experts, generator=g, dtype=F64) * 0.3)
    x = torch.randn(draw(st.integers(1, 2)), draw(st.integers(1, 5)), kwargs["emb_dim"],
                    generator=g, dtype=F64)
    return moe, x


def swiglu(expert, x):
    gate = x @ expert.fc1.weight.T
    return ((gate * torch.sigmoid(gate)) * (x @ expert.fc2.weight.T)) @ expert.fc3.weight.T


def sparse_gate(router: Router, token: torch.Tensor) -> torch.Tensor:
    """[E] gate of one token: zero except its chosen experts, from sorted scores."""
    logits = router.weight @ token  # (E,)
    n, k = router.n_experts, router.top_k
    if router.scoring == "softmax":
        probs = torch.exp(logits - logits.max())
        probs = probs / probs.sum()
        choice, value = probs, probs
    else:
        value = 1 / (1 + torch.exp(-logits))
        choice = value + router.score_bias
        size = n // router.n_group
        merits = [sorted(choice[g * size:(g + 1) * size].tolist())[-2:]
                  for g in range(router.n_group)] if router.n_group > 1 else [[0.0]]
        ranked = sorted(range(router.n_group), key=lambda g: -sum(merits[g]))
        allowed = {e for g in ranked[:router.topk_group] for e in range(g * size, (g + 1) * size)}
        choice = torch.tensor([c if e in allowed else float("-inf")
                               for e, c in enumerate(choice.tolist())], dtype=F64)
    chosen = sorted(range(n), key=lambda e: -float(choice[e]))[:k]
    gate = torch.zeros(n, dtype=F64)
    gate[chosen] = value[chosen]
    if router.norm_topk_prob:
        gate = gate / gate.sum()
    return gate * router.routed_scaling_factor


def naive_moe(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the sparse gate; shared experts added."""
    tokens = x.reshape(-1, x.shape[-1])
    rows = []
    for token in tokens:
        gate = sparse_gate(moe.gate, token)
        row = sum(gate[e] * swiglu(expert, token) for e, expert in enumerate(moe.experts))
        if moe.shared_experts is not None:
            row = row + swiglu(moe.shared_experts, token)
        rows.append(row)
    return torch.stack(rows).view(x.shape)


@settings(max_examples=25)
@given(moe_setups())
def test_the_mixture_equals_every_expert_weighted_by_the_sparse_gate(setup):
    moe, x = setup
    torch.testing.assert_close(moe(x), naive_moe(moe, x), **TIGHT)


@settings(max_examples=15)
@given(moe_setups())
def test_each_expert_runs_once_on_exactly_its_routed_tokens(setup):
    moe, x = setup
    seen = {e: [] for e in range(len(moe.experts))}
    hooks = [expert.register_forward_hook(lambda m, args, out, e=e: seen[e].append(args[0]))
             for e, expert in enumerate(moe.experts)]
    moe(x)
    for hook in hooks:
        hook.remove()
    tokens = x.reshape(-1, x.shape[-1])
    for e, calls in seen.items():
        routed = [t for t in tokens if sparse_gate(moe.gate, t)[e] != 0]
        assert len(calls) == (1 if routed else 0)
        if routed:
            torch.testing.assert_close(calls[0], torch.stack(routed), rtol=0, atol=0)


@settings(max_examples=15)
@given(moe_setups(n_experts=1, top_k=1, scoring="softmax", routed_scaling_factor=1.0))
def test_one_expert_with_k_1_is_the_dense_swiglu(setup):
    moe, x = setup
    torch.testing.assert_close(moe(x), swiglu(moe.experts[0], x), **TIGHT)


@settings(max_examples=15)
@given(moe_setups())
def test_a_tokens_output_does_not_depend_on_the_other_tokens(setup):
    moe, x = setup
    together = moe(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            alone = moe(x[b:b + 1, t:t + 1])
            torch.testing.assert_close(alone[0, 0], together[b, t], **TIGHT)


@settings(max_examples=30)
@given(st.integers(1, 3), st.integers(1, 20), st.integers(2, 8), st.data(), seeds)
def test_the_auxiliary_loss_equals_transformers(layers, rows, n_experts, data, seed):
    top_k = data.draw(st.integers(1, n_experts))
    g = generator(seed)
    logits = [torch.randn(rows, n_experts, generator=g, dtype=F64) * 2 for _ in range(layers)]
    ours = load_balancing_loss(logits, n_experts, top_k)
    theirs = load_balancing_loss_func(tuple(logits), n_experts, top_k)
    assert ours.dtype == F64
    torch.testing.assert_close(ours, theirs.to(F64), rtol=1e-5, atol=1e-6)  # theirs is float32


def test_the_auxiliary_loss_spans_balanced_to_collapsed():
    assert float(load_balancing_loss([torch.zeros(8, 4, dtype=F64)], 4, 2)) == 2.0
    collapsed = torch.full((8, 4), -1e4, dtype=F64)
    collapsed[:, 0] = 1e4
    assert float(load_balancing_loss([collapsed], 4, 1)) == pytest.approx(4.0)


def test_routers_and_mixtures_refuse_bad_arguments():
    with pytest.raises(ValueError, match="top_k must be <= n_experts=2, got 3"):
        Router(4, 2, 3)
    with pytest.raises(ValueError, match="scoring must be one of"):
        Router(4, 2, 1, scoring="relu")
    with pytest.raises(ValueError, match="n_group must divide n_experts=6"):
        Router(4, 6, 1, n_group=4)
    with pytest.raises(ValueError, match="top_k must be <= the experts of the topk_group=1 kept"):
        Router(4, 4, 3, scoring="sigmoid", n_group=2, topk_group=1)
    with pytest.raises(ValueError, match="needs >= 2 experts"):
        Router(4, 3, 1, scoring="sigmoid", n_group=3, topk_group=1)
    with pytest.raises(TypeError, match="n_experts must be an int >= 1"):
        MoEFeedForward(4, 4, 2.0, 1)
    with pytest.raises(ValueError, match="at least one layer"):
        load_balancing_loss([], 4, 2)
    with pytest.raises(ValueError, match=r"\[N, n_experts=4\]"):
        load_balancing_loss([torch.zeros(3, 5)], 4, 2)


@settings(max_examples=40)
@given(st.sampled_from([2, 3, 4]), st.integers(2, 4), st.data(), seeds)
def test_group_limited_routing_chooses_within_the_best_groups(n_group, size, data, seed):
    topk_group = data.draw(st.integers(1, n_group - 1))
    top_k = data.draw(st.integers(1, topk_group * size))
    router = Router(6, n_group * size, top_k, scoring="sigmoid", n_group=n_group,
                    topk_group=topk_group, norm_topk_prob=data.draw(st.booleans())).to(F64)
    g = generator(seed)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g, dtype=F64))
        router.score_bias.copy_(torch.randn(n_group * size, generator=g, dtype=F64) * 0.3)
        tokens = torch.randn(8, 6, generator=g, dtype=F64)
        _, weights, experts = router(tokens)
        for token, w, e in zip(tokens, weights, experts, strict=True):
            gate = sparse_gate(router, token)
            assert sorted(e.tolist()) == sorted(torch.nonzero(gate).flatten().tolist())
            torch.testing.assert_close(w, gate[e], **TIGHT)
