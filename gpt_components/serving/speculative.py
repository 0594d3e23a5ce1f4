"""Speculative decoding's arithmetic: the rejection rule that leaves the target unchanged.

A small draft model proposes ``k`` tokens, one after the other; the target model scores all of
them in one forward pass. Greedy decoding keeps the longest prefix of the draft that agrees
with the target's argmax, then the target's own token. Sampling keeps draft token ``x``, drawn
from the draft's distribution ``q``, with probability ``min(1, p(x) / q(x))`` (``p`` the
target's); at the first rejection it draws from the residual ``max(p - q, 0)``, renormalised.
Whatever ``q`` is, the token that comes out is distributed exactly as ``p`` (Leviathan et
al., 2023; Chen et al., 2023): ``q(x) min(1, p(x)/q(x)) = min(q(x), p(x))``, and the residual
fills in ``p(x) - min(q(x), p(x))``, the mass the draft could not supply. If every draft token
is kept, one more comes from the target's distribution after the last.

``sampling_distribution`` is the distribution ``generation.sample_next_token`` draws from
(top-k, then top-p, then temperature), so target and draft are compared as the engine samples.

>>> import torch
>>> p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
>>> q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
>>> outcome = sum(q[x] * acceptance_probability(p, q, x) * torch.eye(3, dtype=torch.float64)[x]
...               + q[x] * (1 - acceptance_probability(p, q, x)) * residual_distribution(p, q)
...               for x in range(3))
>>> torch.allclose(outcome, p)
True
"""

from __future__ import annotations

import torch

from ..machinery.checks import check_float, check_int

__all__ = ["sampling_distribution", "acceptance_probability", "residual_distribution",
           "verify_drafts"]


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """The probabilities (…, vocab) ``sample_next_token`` draws from; one-hot argmax when
    ``temperature`` is 0 (greedy)."""
    check_float("temperature", temperature, low=0)
    check_int("top_k", top_k, low=1, optional=True)
    check_float("top_p", top_p, low=0, high=1, low_open=True, optional=True)
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(torch.softmax(logits, dim=-1), dim=-1, descending=True)
        total = sorted_probs.cumsum(dim=-1)
        before = torch.cat([torch.zeros_like(total[..., :1]), total[..., :-1]], dim=-1)
        drop_sorted = before >= top_p  # a token goes once the likelier ones reach top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    scaled = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    return torch.softmax(scaled, dim=-1)


def acceptance_probability(p: torch.Tensor, q: torch.Tensor, token: int) -> torch.Tensor:
    """``min(1, p[token] / q[token])``: how likely the draft's ``token`` is kept."""
    return torch.clamp(p[..., token] / q[..., token], max=1.0)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``max(p - q, 0)`` renormalised: what to draw from after a rejection. (A rejection
    happens only where ``p != q``, so the residual then has mass.)"""
    residual = torch.clamp(p - q, min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(p.dtype).tiny), p)


def verify_drafts(logits: torch.Tensor, drafts: list[int], draft_probs: list[torch.Tensor],
                  temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator) -> list[int]:
    """The kept drafts and one token of the model's own, from the model's ``logits``
    (k + 1, vocab) at the positions of the last fed token and the ``k`` drafts.

    Greedy (``temperature`` 0) keeps the drafts that agree with the argmax, then the argmax
    where they stop agreeing (or after the last). Sampling keeps draft ``x`` with probability
    ``min(1, p(x) / q(x))`` (``q`` = ``draft_probs``, the draft's distribution it was drawn
    from), draws from the residual at the first rejection, or from ``p`` after the last draft.
    """
    kept: list[int] = []
    for i, token in enumerate(drafts):
        if temperature == 0:
            if token != int(logits[i].argmax()):
                break
        else:
            p = sampling_distribution(logits[i], temperature, top_k, top_p)
            accept = acceptance_probability(p, draft_probs[i], token)
            if float(torch.rand((), generator=generator, dtype=torch.float64)) >= accept:
                residual = residual_distribution(p, draft_probs[i])
                return kept + [int(torch.multinomial(residual, 1, generator=generator))]
        kept.append(token)
    last = logits[len(kept)]
    if temperature == 0:
        return kept + [int(last.argmax())]
    p = sampling_distribution(last, temperature, top_k, top_p)
    return kept + [int(torch.multinomial(p, 1, generator=generator))]
