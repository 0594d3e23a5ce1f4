"""Gated DeltaNet (past the book; Qwen3-Next, Qwen3.5): linear attention with a state of fixed size.

Softmax attention keeps every key and value and compares each new query with all of them: the
KV cache grows with the text. Linear attention keeps instead one matrix per head, the state
``S`` [head_k_dim, head_v_dim], an associative memory that maps a key to a value; a query reads
it as ``o_t = S_t^T q_t``. The **delta rule** writes a token by correcting what the memory
already says for its key, at a learned rate ``beta_t`` in (0, 1), and the **decay gate**
``alpha_t = exp(g_t)`` in (0, 1] forgets a little first::

    S_t = alpha_t S_{t-1}                      # forget
    S_t = S_t + k_t (beta_t (v_t - S_t^T k_t))^T   # write the correction, not the value

(Yang, Kautz and Hatamizadeh, "Gated Delta Networks", 2024). Keys and queries are
L2-normalised, so ``S^T k`` is a well-scaled prediction, and queries are scaled by
``head_k_dim ** -0.5``. The state costs the same memory at token 10 as at token 100,000.

Exports:

- ``l2_normalize``: ``x / sqrt(sum x^2 + eps)`` over the last axis, as the published kernels do.
- ``recurrent_gated_delta_rule``: the textbook, one token at a time.
- ``chunked_gated_delta_rule``: the same function, parallel within chunks of ``chunk_size``
  tokens (a triangular solve per chunk) and recurrent across chunks only.
- ``delta_rule_mixing``: the matrix ``M`` with ``out = M @ v`` from an empty state (the rule is
  linear in the values): what ``trace`` can honestly show of a linear-attention layer.
- ``ShortConvolution``: the causal depthwise convolution (kernel 4) over queries, keys and
  values before the rule, then SiLU.
- ``GatedRMSNorm``: RMSNorm of each head's output times ``silu(z)``, the output gate.
- ``DeltaNetCache``: the layer's cache kind (a ``kv_cache.LayerCache``): the recurrent state and
  the convolution's last ``kernel - 1`` inputs; constant memory whatever the length.
- ``GatedDeltaNet``: the layer: projections, convolution, gates, the rule, the gated norm.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> q, k = (l2_normalize(torch.randn(1, 2, 10, 4, generator=g, dtype=torch.float64))
...         for _ in range(2))
>>> v = torch.randn(1, 2, 10, 3, generator=g, dtype=torch.float64)
>>> gate = -torch.rand(1, 2, 10, generator=g, dtype=torch.float64)
>>> beta = torch.rand(1, 2, 10, generator=g, dtype=torch.float64)
>>> one, s1 = recurrent_gated_delta_rule(q, k, v, gate, beta)
>>> chunked, s2 = chunked_gated_delta_rule(q, k, v, gate, beta, chunk_size=4)
>>> torch.allclose(one, chunked), torch.allclose(s1, s2), tuple(s1.shape)  # state: [dk, dv]
(True, True, (1, 2, 4, 3))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import check_features
from ..kv_cache import LayerCache
from ..machinery.checks import (
    check_choice,
    check_float,
    check_int,
    check_tensor,
    value_error,
)
from ..modern.attention import first_position

__all__ = ["l2_normalize", "recurrent_gated_delta_rule", "chunked_gated_delta_rule",
           "delta_rule_mixing", "ShortConvolution", "GatedRMSNorm", "DeltaNetCache",
           "GatedDeltaNet", "DELTA_RULE_KERNELS", "DELTANET_PROJECTIONS"]

DELTA_RULE_KERNELS = ("chunked", "recurrent")
# How the input projections are laid out: Qwen3.5's four matrices, or Qwen3-Next's two, fused
# per key head ([q, k, v, z] and [b, a] of each group of value heads side by side).
DELTANET_PROJECTIONS = ("split", "grouped")


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x`` divided by its L2 norm over the last axis (``eps`` inside the square root)."""
    check_tensor("x", x, kind="floating")
    check_float("eps", eps, low=0)
    return x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps)


def _check_rule(q: object, k: object, v: object, g: object, beta: object,
                state: object) -> tuple[int, int, int, int, int]:
    """Shapes of a rule's inputs: q, k (B, H, T, dk), v (B, H, T, dv), g, beta (B, H, T)."""
    for name, x, dims in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("g", g, 3), ("beta", beta, 3)):
        check_tensor(name, x, kind="floating", dims=dims)
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    for name, x, shape in (("k", k, (b, h, t, dk)), ("v", v, (b, h, t, dv)),
                           ("g", g, (b, h, t)), ("beta", beta, (b, h, t)),
                           ("state", state, (b, h, dk, dv))):
        if x is not None and tuple(x.shape) != shape:
            raise value_error(name, f"{name} must have shape {shape} (from q {tuple(q.shape)} "
                                    f"and v {tuple(v.shape)}), got {tuple(x.shape)}")
    return b, h, t, dk, dv


def _query_scale(scale: float | None, dk: int) -> float:
    return dk**-0.5 if scale is None else check_float("scale", scale, low=0, low_open=True)


def recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               g: torch.Tensor, beta: torch.Tensor,
                               state: torch.Tensor | None = None,
                               scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule one token at a time: outputs (B, H, T, dv) and the last state.

    ``q``, ``k`` (B, H, T, dk) and ``v`` (B, H, T, dv) per head; ``g`` (B, H, T) the log of
    each step's decay (<= 0); ``beta`` (B, H, T) each step's writing rate; ``state`` (B, H, dk,
    dv) the memory before the first token (None: empty); queries are scaled by ``scale``
    (default ``dk ** -0.5``).
    """
    b, h, t, dk, dv = _check_rule(q, k, v, g, beta, state)
    q = q * _query_scale(scale, dk)
    s = q.new_zeros(b, h, dk, dv) if state is None else state
    out = v.new_empty(b, h, t, dv)
    for i in range(t):
        s = s * g[:, :, i].exp()[..., None, None]  # forget: S <- alpha_t S
        predicted = torch.einsum("bhk,bhkv->bhv", k[:, :, i], s)  # what S says for k_t
        correction = beta[:, :, i, None] * (v[:, :, i] - predicted)
        s = s + k[:, :, i, :, None] * correction[:, :, None, :]  # S <- S + k_t correction^T
        out[:, :, i] = torch.einsum("bhk,bhkv->bhv", q[:, :, i], s)  # read: S^T q_t
    return out, s


def _within_chunks(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor,
                   beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What a chunk needs of its own tokens, for all chunks at once ((..., C) leading axes).

    With ``gamma_i`` the decay from the chunk's start to its token ``i`` (inclusive), the
    corrections ``u`` a chunk writes solve ``(I + A) u = beta v - beta gamma k S_0``, where
    ``A[i, j] = beta_i (gamma_i / gamma_j) k_i . k_j`` for ``j < i`` (how much the earlier
    writes of the chunk already predict token ``i``'s value), and token ``i`` reads
    ``gamma_i S_0^T q_i + sum_{j <= i} (gamma_i / gamma_j) (q_i . k_j) u_j``.
    Returns ``log_gamma`` (..., C), ``decay`` (..., C, C) = gamma_i / gamma_j below the
    diagonal and on it, 0 above, and ``I + A`` (..., C, C).
    """
    c = g.shape[-1]
    log_gamma = g.cumsum(dim=-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=g.device).tril()
    # In log space, masked before exp: gamma_i / gamma_j above the diagonal could overflow.
    decay = (log_gamma[..., :, None] - log_gamma[..., None, :]).masked_fill(~causal, -math.inf)
    decay = decay.exp()
    system = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * decay).tril(-1)
    system = system + torch.eye(c, dtype=system.dtype, device=system.device)
    return log_gamma, decay, system


def chunked_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             g: torch.Tensor, beta: torch.Tensor, chunk_size: int = 64,
                             state: torch.Tensor | None = None,
                             scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule, parallel within chunks of ``chunk_size`` tokens: the same outputs
    and last state as ``recurrent_gated_delta_rule`` (same arguments), in ``T / chunk_size``
    sequential steps instead of ``T``.

    Within a chunk every token's correction depends on the earlier ones, a lower-triangular
    system solved at once (``_within_chunks`` writes it out); across chunks only the state
    travels. The sequence is padded to whole chunks with tokens whose key, value and writing
    rate are zero and whose decay is 1: they write nothing and forget nothing.
    """
    b, h, t, dk, dv = _check_rule(q, k, v, g, beta, state)
    c = check_int("chunk_size", chunk_size, low=1)
    q = q * _query_scale(scale, dk)
    pad = (-t) % c
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (t + pad) // c
    q, k, v = (x.reshape(b, h, n, c, x.shape[-1]) for x in (q, k, v))  # (B, H, N, C, d)
    g, beta = g.reshape(b, h, n, c), beta.reshape(b, h, n, c)  # (B, H, N, C)
    log_gamma, decay, system = _within_chunks(q, k, g, beta)
    gamma = log_gamma.exp()
    # u = values_part - keys_part @ S_0: both parts solved once, for every chunk together.
    values_part = torch.linalg.solve_triangular(system, beta[..., None] * v, upper=False,
                                                unitriangular=True)
    keys_part = torch.linalg.solve_triangular(system, (beta * gamma)[..., None] * k, upper=False,
                                              unitriangular=True)
    reads = (q @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C): q_i . k_j, decayed, causal
    q_from_state = q * gamma[..., None]  # what a query reads of the state before its chunk
    k_to_end = k * (log_gamma[..., -1:] - log_gamma).exp()[..., None]  # decayed to chunk's end
    chunk_decay = gamma[..., -1, None, None]  # (B, H, N, 1, 1)
    s = q.new_zeros(b, h, dk, dv) if state is None else state
    out = v.new_empty(b, h, n, c, dv)
    for i in range(n):
        u = values_part[:, :, i] - keys_part[:, :, i] @ s  # (B, H, C, dv): the corrections
        out[:, :, i] = q_from_state[:, :, i] @ s + reads[:, :, i] @ u
        s = s * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ u
    return out.reshape(b, h, n * c, dv)[:, :, :t], s


def delta_rule_mixing(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                      scale: float | None = None) -> torch.Tensor:
    """``M`` (B, H, T, T), lower triangular, with ``rule(q, k, v, g, beta) == M @ v`` from an
    empty state, for every ``v``: the rule is linear in the values.

    The whole sequence as one chunk: ``M = (q k^T * decay) (I + A)^{-1} diag(beta)``. Unlike
    softmax probabilities its entries may be negative (the delta rule subtracts what the
    memory predicted) and its rows need not sum to one.
    """
    v_like = k.new_empty(*k.shape[:3], 1)
    _, _, _, dk, _ = _check_rule(q, k, v_like, g, beta, None)
    q = q * _query_scale(scale, dk)
    _, decay, system = _within_chunks(q, k, g, beta)
    writes = torch.linalg.solve_triangular(system, torch.diag_embed(beta), upper=False,
                                           unitriangular=True)
    return ((q @ k.transpose(-1, -2)) * decay) @ writes


class ShortConvolution(nn.Module):
    """A causal depthwise convolution over time, then SiLU: each channel sees its last
    ``kernel_size`` inputs (itself included) and nothing later.

    ``weight`` is ``nn.Conv1d``'s (channels, 1, kernel_size), no bias. ``forward(x, past)``
    takes ``x`` (B, channels, T) and ``past`` (B, channels, kernel_size - 1), the inputs just
    before ``x`` (None: zeros, the start of a text).
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.channels = check_int("channels", channels, low=1)
        self.kernel_size = check_int("kernel_size", kernel_size, low=1)
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        if not self.weight.is_meta:  # nn.Conv1d's default: uniform within 1/sqrt(fan_in)
            nn.init.uniform_(self.weight, -kernel_size**-0.5, kernel_size**-0.5)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x", x, kind="floating", dims=3)
        if x.shape[1] != self.channels:
            raise value_error("x", f"x must be (B, channels={self.channels}, T), got shape "
                                   f"{tuple(x.shape)}")
        if past is None:
            window = F.pad(x, (self.kernel_size - 1, 0))
        else:
            window = torch.cat([past, x], dim=-1)  # (B, C, K - 1 + T)
        # Each output looks at the K inputs ending at its own: (B, C, T, K) windows, weighted.
        # (F.conv1d with groups=channels computes the same; in float64 on a CPU it is ~100x
        # slower at these sizes.)
        windows = window.unfold(-1, self.kernel_size, 1)
        return F.silu((windows * self.weight).sum(dim=-1))  # (B, C, T)


class GatedRMSNorm(nn.Module):
    """``weight * rmsnorm(x) * silu(z)`` over the last axis: the output gate of Gated DeltaNet.

    The weight starts at one (this norm is not zero-centred); the mean square is taken in at
    least float32.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        check_int("dim", dim, low=1)
        self.eps = check_float("eps", eps, low=0, low_open=True)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating")
        if x.dim() < 1 or x.shape[-1] != self.weight.shape[0]:
            raise value_error("x", f"x must be [..., {self.weight.shape[0]}], got shape "
                                   f"{tuple(x.shape)}")
        check_tensor("z", z, kind="floating")
        if z.shape != x.shape:
            raise value_error("z", f"z must have x's shape {tuple(x.shape)}, got "
                                   f"{tuple(z.shape)}")
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = wide * torch.rsqrt(wide.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        gate = F.silu(z.to(wide.dtype))
        return ((self.weight * normed.to(x.dtype)).to(wide.dtype) * gate).to(x.dtype)


class DeltaNetCache(LayerCache):
    """A Gated DeltaNet layer's cache: ``state`` (B, heads, head_k_dim, head_v_dim) and
    ``conv_tail`` (B, conv_dim, kernel - 1), the convolution's last inputs.

    Memory does not grow with the text: ``max_tokens`` bounds positions (as for the attention
    layers of the same stack), not bytes. ``store(x, None)`` takes the new positions'
    convolution inputs ``x`` (B, conv_dim, T), keeps the last ``kernel - 1`` inputs and returns
    what the new positions read: the inputs before them and the state before them (zeros at
    position 0, whatever a reused buffer holds). ``keep_state`` writes the state after them.
    Both writes happen in the pass that ``advance`` then counts; the model checks its inputs
    before any layer runs, so a refused pass never writes.
    """

    def __init__(self, batch_size: int, n_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_dim: int, conv_kernel: int, max_tokens: int, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(batch_size, max_tokens)
        for name, value in (("n_heads", n_heads), ("head_k_dim", head_k_dim),
                            ("head_v_dim", head_v_dim), ("conv_dim", conv_dim),
                            ("conv_kernel", conv_kernel)):
            check_int(name, value, low=1)
        self.register_buffer("state", torch.zeros(batch_size, n_heads, head_k_dim, head_v_dim,
                                                  device=device, dtype=dtype), persistent=False)
        self.register_buffer("conv_tail", torch.zeros(batch_size, conv_dim, conv_kernel - 1,
                                                      device=device, dtype=dtype),
                             persistent=False)

    def _write(self, k: torch.Tensor, v: torch.Tensor | None,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[1] != self.conv_tail.shape[1]:
            raise value_error("k", f"k must be the convolution's inputs (B, conv_dim="
                                   f"{self.conv_tail.shape[1]}, T), got {tuple(k.shape)}")
        past = self.conv_tail.clone() if start else torch.zeros_like(self.conv_tail)
        state = self.state.clone() if start else torch.zeros_like(self.state)
        kept = self.conv_tail.shape[-1]
        window = torch.cat([past, k], dim=-1)
        self.conv_tail.copy_(window[..., window.shape[-1] - kept:])
        return past, state

    def keep_state(self, state: torch.Tensor) -> None:
        """The recurrent state after the positions just stored."""
        self.state.copy_(state)

    @property
    def layout(self) -> tuple:
        return (type(self).__name__, tuple(self.state.shape[1:]),
                tuple(self.conv_tail.shape[1:]))


class GatedDeltaNet(nn.Module):
    """A Gated DeltaNet layer, as Qwen3-Next and Qwen3.5 run it.

    From ``x`` (B, T, emb): queries and keys (``n_key_heads`` heads of ``head_k_dim``), values
    and the output gate ``z`` (``n_value_heads`` of ``head_v_dim``; each key head serves
    ``n_value_heads / n_key_heads`` value heads), the writing rate ``beta = sigmoid(b)`` and the
    decay ``g = -exp(A_log) * softplus(a + dt_bias)`` per value head. Queries, keys and values
    pass the ``ShortConvolution``; queries and keys are L2-normalised; the rule runs
    (``kernel="chunked"``, chunks of ``chunk_size``, or ``"recurrent"``; one new token always
    runs the recurrence); each head's output is normed and gated by ``z`` (``GatedRMSNorm``)
    and projected back by ``W_out``. ``projections`` picks the input matrices' layout (see
    ``DELTANET_PROJECTIONS``). It takes ``forward``'s arguments of the decoder's attentions and
    ignores ``rope``: its positions come from the order of the recurrence.
    """

    def __init__(self, emb_dim: int, n_key_heads: int, n_value_heads: int, head_k_dim: int,
                 head_v_dim: int, *, conv_kernel: int = 4, norm_eps: float = 1e-6,
                 chunk_size: int = 64, kernel: str = "chunked",
                 projections: str = "split") -> None:
        super().__init__()
        self.emb_dim = check_int("emb_dim", emb_dim, low=1)
        self.n_key_heads = check_int("n_key_heads", n_key_heads, low=1)
        self.n_value_heads = check_int("n_value_heads", n_value_heads, low=1)
        if n_value_heads % n_key_heads:
            raise value_error("n_value_heads", f"n_value_heads must be a multiple of "
                                               f"n_key_heads={n_key_heads}, got {n_value_heads}")
        self.head_k_dim = check_int("head_k_dim", head_k_dim, low=1)
        self.head_v_dim = check_int("head_v_dim", head_v_dim, low=1)
        self.chunk_size = check_int("chunk_size", chunk_size, low=1)
        self.kernel = check_choice("kernel", kernel, DELTA_RULE_KERNELS)
        self.projections = check_choice("projections", projections, DELTANET_PROJECTIONS)
        self.group = n_value_heads // n_key_heads  # value heads per key head
        self.key_dim = n_key_heads * head_k_dim
        self.value_dim = n_value_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim  # queries, keys, values convolved
        if projections == "split":
            self.in_proj_qkv = nn.Linear(emb_dim, self.conv_dim, bias=False)
            self.in_proj_z = nn.Linear(emb_dim, self.value_dim, bias=False)
            self.in_proj_b = nn.Linear(emb_dim, n_value_heads, bias=False)
            self.in_proj_a = nn.Linear(emb_dim, n_value_heads, bias=False)
        else:
            self.in_proj_qkvz = nn.Linear(emb_dim, self.conv_dim + self.value_dim, bias=False)
            self.in_proj_ba = nn.Linear(emb_dim, 2 * n_value_heads, bias=False)
        self.conv1d = ShortConvolution(self.conv_dim, check_int("conv_kernel", conv_kernel,
                                                                low=1))
        # Per value head: the decay's time step bias and its rate, A = exp(A_log) in [0.01, 16].
        self.dt_bias = nn.Parameter(torch.ones(n_value_heads))
        self.A_log = nn.Parameter(torch.empty(n_value_heads))
        if not self.A_log.is_meta:
            with torch.no_grad():
                self.A_log.copy_(torch.empty(n_value_heads).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(head_v_dim, eps=norm_eps)
        # W_out, not out_proj: a hybrid's attention layers give that name another Hub name.
        self.W_out = nn.Linear(self.value_dim, emb_dim, bias=False)

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> DeltaNetCache:
        """An empty cache for this layer: its state and its convolution's tail."""
        return DeltaNetCache(batch_size, self.n_value_heads, self.head_k_dim, self.head_v_dim,
                             self.conv_dim, self.conv1d.kernel_size, max_tokens, device=device,
                             dtype=dtype)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``qkv`` (B, T, conv_dim) as [queries | keys | values], ``z`` (B, T, Hv, dv), ``b``
        and ``a`` (B, T, Hv)."""
        b_, t, _ = x.shape
        hv, dv = self.n_value_heads, self.head_v_dim
        if self.projections == "split":
            return (self.in_proj_qkv(x), self.in_proj_z(x).view(b_, t, hv, dv),
                    self.in_proj_b(x), self.in_proj_a(x))
        nk, dk, r = self.n_key_heads, self.head_k_dim, self.group
        # Per key head: its query, its key, then the values and gates of its r value heads.
        fused = self.in_proj_qkvz(x).view(b_, t, nk, 2 * dk + 2 * r * dv)
        q, k, v, z = fused.split([dk, dk, r * dv, r * dv], dim=-1)
        qkv = torch.cat([q.reshape(b_, t, -1), k.reshape(b_, t, -1), v.reshape(b_, t, -1)], -1)
        b, a = self.in_proj_ba(x).view(b_, t, nk, 2 * r).split([r, r], dim=-1)
        return qkv, z.reshape(b_, t, hv, dv), b.reshape(b_, t, hv), a.reshape(b_, t, hv)

    def forward(self, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None, start: int | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, emb) after ``cache``'s positions (or from position 0 without one).

        ``need_weights`` (no cache): also return ``|M|`` of ``delta_rule_mixing``, each row
        divided by its sum (B, Hv, T, T): the share of each earlier (convolved) value in a
        token's output, by magnitude. It sums to one and never looks ahead, but it is not a
        softmax: ``M`` itself may subtract, and the convolution mixes the last few tokens
        before the rule.
        """
        check_features(x, self.emb_dim, (3,), self.W_out.weight)
        first_position(cache, start)  # start, if given, must be the cache's next position
        if need_weights and cache is not None:
            raise value_error("need_weights", "need_weights shows a pass from an empty state: "
                                              "it must be False with a cache")
        b_, t, _ = x.shape
        qkv, z, b, a = self._project(x)
        past = state = None
        if cache is not None:
            past, state = cache.store(qkv.transpose(1, 2), None)
        mixed = self.conv1d(qkv.transpose(1, 2), past).transpose(1, 2)  # (B, T, conv_dim)
        q, k, v = mixed.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        wide = torch.promote_types(x.dtype, torch.float32)  # the rule in at least float32
        # (B, T, heads, d) -> (B, Hv, T, d); each key head repeated for its value heads.
        q, k = (l2_normalize(y.view(b_, t, self.n_key_heads, self.head_k_dim).to(wide))
                .repeat_interleave(self.group, dim=2).transpose(1, 2) for y in (q, k))
        v = v.view(b_, t, self.n_value_heads, self.head_v_dim).to(wide).transpose(1, 2)
        beta = torch.sigmoid(b.to(wide)).transpose(1, 2)  # (B, Hv, T)
        g = (-self.A_log.to(wide).exp() * F.softplus(a.to(wide) + self.dt_bias.to(wide)))
        g = g.transpose(1, 2)  # (B, Hv, T): log of each step's decay, <= 0
        state = None if state is None else state.to(wide)
        if t == 1 or self.kernel == "recurrent":
            out, state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
        else:
            out, state = chunked_gated_delta_rule(q, k, v, g, beta, self.chunk_size, state)
        if cache is not None:
            cache.keep_state(state)
        out = self.norm(out.transpose(1, 2).to(x.dtype), z)  # (B, T, Hv, dv)
        out = self.W_out(out.reshape(b_, t, self.value_dim))
        if not need_weights:
            return out
        mixing = delta_rule_mixing(q, k, g, beta).abs()
        return out, (mixing / mixing.sum(dim=-1, keepdim=True)).to(x.dtype)
