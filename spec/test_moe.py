"""Properties of the mixture-of-experts feed-forward (``moe.py``: Qwen3-MoE's and DeepSeek-V3's
routing; ``experts.py``: the experts as grouped matrix products).

The reference runs every expert on every token (the SwiGLU written out with explicit matrix
products and ``x * sigmoid(x)``) and weights the outputs by a sparse gate computed here, token by
token from sorted scores, not with the module's ``topk``. The stacked experts' grouped kernel
(sorted pairs and grouped matrix products; gathered matrices for a batch of few tokens) is
proven equal to the textbook per-expert dispatch, forward and every gradient of a training step,
in float64, and torch's float32 grouped kernel to the float64 reference. The auxiliary loss is
compared with ``transformers``' own ``load_balancing_loss_func``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from gpt_components.machinery.checkpoint import load_checkpoint, save_checkpoint
from gpt_components.machinery.registry import build_model, preset_config
from gpt_components.modern import experts as experts_module
from gpt_components.modern.experts import SwiGLUExperts
from gpt_components.modern.feedforward import SwiGLU
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


def swiglu_of(fc1, fc2, fc3, x):
    gate = x @ fc1.T
    return ((gate * torch.sigmoid(gate)) * (x @ fc2.T)) @ fc3.T


def swiglu(expert, x):
    """A ``SwiGLU`` module (the shared experts) written out."""
    return swiglu_of(expert.fc1.weight, expert.fc2.weight, expert.fc3.weight, x)


def matrices(experts, e):
    """Routed expert ``e``'s (fc1, fc2, fc3) read from the stacked ``SwiGLUExperts``: the gate
    rows above the up rows in ``gate_up[e]`` (transformers' ``gate_up_proj``), ``down[e]``."""
    hidden = experts.down.shape[2]
    return experts.gate_up[e, :hidden], experts.gate_up[e, hidden:], experts.down[e]


def routed(experts, e, x):
    """Routed expert ``e`` of the stacked ``SwiGLUExperts`` written out from its matrices."""
    return swiglu_of(*matrices(experts, e), x)


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
        row = sum(gate[e] * routed(moe.experts, e, token) for e in range(len(moe.experts)))
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
@given(moe_setups(), st.sampled_from(["grouped", "per_expert"]))
def test_each_expert_runs_once_on_exactly_its_routed_tokens(setup, kernel):
    """The textbook dispatch calls each chosen expert once; the grouped kernel's first product
    sees, in expert ``e``'s group, exactly the tokens routed to ``e``, in order."""
    moe, x = setup
    tokens = x.reshape(-1, x.shape[-1])
    moe.experts.kernel = kernel
    seen = {e: [] for e in range(len(moe.experts))}
    if kernel == "per_expert":
        textbook = moe.experts.expert
        moe.experts.expert = lambda e, rows: seen[e].append(rows) or textbook(e, rows)
        moe(x)
        del moe.experts.expert
    else:
        calls = []
        real = experts_module.grouped_linear
        experts_module.grouped_linear = lambda *args: calls.append(args) or real(*args)
        try:
            moe(x)
        finally:
            experts_module.grouped_linear = real
        if not calls:  # few pairs: gathered matrices, no grouping
            assert tokens.shape[0] * moe.gate.top_k <= len(moe.experts)
            return
        rows, _, ends = calls[0]
        bounds = [0, *ends.tolist()]
        for e in range(len(moe.experts)):
            if bounds[e + 1] > bounds[e]:
                seen[e].append(rows[bounds[e]:bounds[e + 1]])
    for e, calls in seen.items():
        routed_rows = [t for t in tokens if sparse_gate(moe.gate, t)[e] != 0]
        assert len(calls) == (1 if routed_rows else 0)
        if routed_rows:
            torch.testing.assert_close(calls[0], torch.stack(routed_rows), rtol=0, atol=0)


@settings(max_examples=15)
@given(moe_setups(n_experts=1, top_k=1, scoring="softmax", routed_scaling_factor=1.0))
def test_one_expert_with_k_1_is_the_dense_swiglu(setup):
    moe, x = setup
    expected = routed(moe.experts, 0, x)  # the one expert's matrices, written out
    if moe.shared_experts is not None:
        expected = expected + swiglu(moe.shared_experts, x)
    torch.testing.assert_close(moe(x), expected, **TIGHT)


@settings(max_examples=30)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=5), st.sampled_from([4, 6, 8]),
       st.sampled_from([4, 6, 8]), st.sampled_from([torch.float32, F64]), st.booleans(), seeds)
def test_grouped_linear_is_one_linear_per_group(counts, width_in, width_out, dtype, in_out,
                                                seed):
    """Forward and backward (through ``.sum()``, whose gradient is expanded), empty groups and
    widths torch's kernel refuses included, either weight layout ([E, out, in], or GPT-OSS's
    [E, in, out] with ``in_out``), against each group's product in float64."""
    g = generator(seed)
    rows = torch.randn(sum(counts), width_in, generator=g, dtype=dtype).requires_grad_(True)
    shape = (width_in, width_out) if in_out else (width_out, width_in)
    weight = torch.randn(len(counts), *shape, generator=g, dtype=dtype).requires_grad_(True)
    ends = torch.tensor(counts).cumsum(0, dtype=torch.int32)
    out = experts_module.grouped_linear(rows, weight, ends, in_out=in_out)
    out.sum().backward()
    start, tol = 0, TIGHT if dtype == F64 else {"rtol": 1e-5, "atol": 1e-5}
    matrices = weight.detach().to(F64)
    matrices = matrices.transpose(1, 2) if in_out else matrices  # (E, out, in) either way
    grad_weight = torch.zeros(matrices.shape, dtype=F64)
    for e, count in enumerate(counts):
        group = rows.detach()[start:start + count].to(F64)
        torch.testing.assert_close(out.detach()[start:start + count].to(F64),
                                   group @ matrices[e].T, **tol)
        torch.testing.assert_close(rows.grad[start:start + count].to(F64),
                                   matrices[e].sum(0).expand(count, -1), **tol)
        grad_weight[e] = group.sum(0).expand(width_out, -1)
        start += count
    expected = grad_weight.transpose(1, 2) if in_out else grad_weight
    torch.testing.assert_close(weight.grad.to(F64), expected, **tol)


def training_step(moe, x, kernel, upstream):
    """Output and gradients (input, every parameter) of ``(moe(x) * upstream).sum()``."""
    moe.experts.kernel = kernel
    moe.requires_grad_(True)
    x = x.clone().requires_grad_(True)
    out = moe(x)
    params = [p for p in moe.parameters()]
    grads = torch.autograd.grad((out * upstream).sum(), [x, *params], allow_unused=True)
    return out.detach(), [torch.zeros_like(p) if g is None else g
                          for g, p in zip(grads, [x, *params], strict=True)]


@settings(max_examples=30)
@given(moe_setups(), seeds)
def test_a_grouped_training_step_equals_the_per_expert_one(setup, seed):
    """Forward and every gradient (input, router, stacked experts, shared experts): the grouped
    kernel (sorted and grouped for many tokens, gathered for few) against the textbook."""
    moe, x = setup
    upstream = torch.randn(x.shape, generator=generator(seed), dtype=F64)
    out, grads = training_step(moe, x, "grouped", upstream)
    out_ref, grads_ref = training_step(moe, x, "per_expert", upstream)
    torch.testing.assert_close(out, out_ref, **TIGHT)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, **TIGHT)


@settings(max_examples=10)
@given(st.integers(1, 40), st.sampled_from([(8, 2), (6, 3), (4, 1)]), seeds)
def test_torchs_float32_grouped_kernel_matches_the_float64_textbook(tokens, experts, seed):
    """Float32 widths that torch's grouped matrix product takes (multiples of 4), its forward and
    backward against the per-expert form in float64."""
    n_experts, top_k = experts
    moe = MoEFeedForward(16, 8, n_experts, top_k)
    g = generator(seed)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(1, tokens, 16, generator=g)
    upstream = torch.randn(x.shape, generator=g)
    out, grads = training_step(moe, x, "grouped", upstream)
    out_ref, grads_ref = training_step(moe.to(F64), x.to(F64), "per_expert", upstream.to(F64))
    torch.testing.assert_close(out.to(F64), out_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad.to(F64), grad_ref, rtol=1e-4, atol=1e-5)


@settings(max_examples=10)
@given(moe_setups(scoring="softmax"))
def test_per_expert_checkpoints_load_into_the_stacked_experts(setup):
    """An older checkpoint's per-expert tensors (``experts.3.fc1.weight``) are stacked on load."""
    moe, x = setup
    old = {name: tensor for name, tensor in moe.state_dict().items()
           if not name.startswith("experts.")}
    old.update({f"experts.{name}": view.clone() for name, view in moe.experts.unstacked().items()})
    assert "experts.0.fc1.weight" in old and "experts.gate_up" not in old
    for e in range(len(moe.experts)):
        for name, matrix in zip(("fc1", "fc2", "fc3"), matrices(moe.experts, e), strict=True):
            assert torch.equal(old[f"experts.{e}.{name}.weight"], matrix)
    again = MoEFeedForward(moe.gate.weight.shape[1], moe.experts.down.shape[2], len(moe.experts),
                           moe.gate.top_k, norm_topk_prob=moe.gate.norm_topk_prob,
                           routed_scaling_factor=moe.gate.routed_scaling_factor).to(F64)
    again.load_state_dict(old)
    torch.testing.assert_close(again(x), moe(x), rtol=0, atol=0)


def test_a_run_checkpoint_with_per_expert_tensors_loads_into_the_stacked_experts(tmp_path):
    """A run directory saved before the experts were stacked (one tensor per expert) loads."""
    model = build_model(preset_config("qwen3-moe-nano", vocab_size=64, n_layers=2))
    old = model.state_dict()
    for prefix, module in model.named_modules():
        if isinstance(module, SwiGLUExperts):
            del old[f"{prefix}.gate_up"], old[f"{prefix}.down"]
            old.update({f"{prefix}.{name}": view.clone()
                        for name, view in module.unstacked().items()})
    assert "trf_blocks.0.ff.experts.7.fc3.weight" in old
    save_checkpoint(tmp_path, model=old, state={}, meta={"step": 1})
    again = build_model(preset_config("qwen3-moe-nano", vocab_size=64, n_layers=2))
    load_checkpoint(tmp_path).load_into(again)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.eval()(ids), model.eval()(ids))


@settings(max_examples=10)
@given(moe_setups(scoring="softmax"))
def test_experts_of_another_form_run_one_module_each(setup):
    """A non-SwiGLU ``expert`` (the gated GELU here) keeps one module per expert; the mixture is
    still every expert weighted by the sparse gate."""
    moe, x = setup
    hidden = moe.experts.down.shape[2]
    geglu = MoEFeedForward(x.shape[-1], hidden, len(moe.experts), moe.gate.top_k,
                           norm_topk_prob=moe.gate.norm_topk_prob,
                           routed_scaling_factor=moe.gate.routed_scaling_factor,
                           expert=lambda emb, width: SwiGLU(emb, width, "gelu_tanh")).to(F64)
    assert not isinstance(geglu.experts, SwiGLUExperts) and len(geglu.experts) == len(moe.experts)
    geglu.gate.load_state_dict(moe.gate.state_dict())
    with torch.no_grad():
        for e, expert in enumerate(geglu.experts):
            for name, matrix in zip(("fc1", "fc2", "fc3"), matrices(moe.experts, e), strict=True):
                getattr(expert, name).weight.copy_(matrix)
        rows = []
        for token in x.reshape(-1, x.shape[-1]):
            gate = sparse_gate(moe.gate, token)
            row = torch.zeros_like(token)
            for e in range(len(moe.experts)):
                fc1, fc2, fc3 = matrices(moe.experts, e)
                u = fc1 @ token
                gelu = 0.5 * u * (1 + torch.tanh(0.7978845608028654 * (u + 0.044715 * u ** 3)))
                row = row + gate[e] * ((gelu * (fc2 @ token)) @ fc3.T)
            rows.append(row)
        torch.testing.assert_close(geglu(x), torch.stack(rows).view(x.shape), **TIGHT)


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
    experts = MoEFeedForward(4, 4, 3, 2).experts
    with pytest.raises(ValueError, match=r"experts must be in \[0, 3\), got values from 0 to 3"):
        experts(torch.zeros(2, 4), torch.ones(2, 2), torch.tensor([[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match=r"must both be \[N=2, k\], got \(2, 2\) and \(2, 1\)"):
        experts(torch.zeros(2, 4), torch.ones(2, 2), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="experts must hold integer numbers"):
        experts(torch.zeros(2, 4), torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="x must have emb_dim=4 features last"):
        experts(torch.zeros(2, 5), torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
    experts.kernel = "fused"
    with pytest.raises(ValueError, match="kernel must be one of"):
        experts(torch.zeros(2, 4), torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
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
