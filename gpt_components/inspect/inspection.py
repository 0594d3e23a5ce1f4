"""Looking inside: what a model does with one prompt, as plain tensors and strings.

``inspect_prompt(model, tokenizer, text)`` runs ``model.trace`` once and returns an
``Inspection``: the prompt's tokens (ids, byte pieces, byte spans), the attention
probabilities of every layer and head, the top-k next-token distribution at every position,
each token's surprisal (its cross-entropy, in nats, the loss ``calc_loss_batch`` gives), the
share of each query's attention its head's sink took (GPT-OSS; zero without sinks), the
logit lens (each layer's residual stream read through the final norm and the output head) and
the size of each stage (the norm of the residual stream entering each layer and of what each
block adds). It uses only ``model.trace``, ``model.final_norm``, ``model.out_head`` and the
tokenizer, so it works for every model family that implements ``trace``.
``gpt_components.inspect.inspection_report`` draws an ``Inspection`` as an HTML page or PNG files.

(Its folder is ``inspect``, as the standard library's module is: harmless with the package's
absolute imports; see ``gpt_components.inspect``.)

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.tokenizers import gpt2_tokenizer
>>> _ = torch.manual_seed(0)
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50257))
>>> seen = inspect_prompt(model, gpt2_tokenizer(), "Every effort moves you", top_k=3)
>>> seen.token_ids, seen.pieces[1]
([6109, 3626, 6100, 345], b' effort')
>>> tuple(seen.attentions.shape), tuple(seen.top_ids.shape), tuple(seen.lens_top_ids.shape)
((3, 3, 4, 4), (4, 3), (4, 4, 3))
>>> seen.surprisal.shape  # one loss per token after the first
torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..machinery.checks import (
    check_instance,
    check_int,
    check_str,
    check_tensor,
    type_error,
    value_error,
)

__all__ = ["Inspection", "inspect_prompt", "logit_lens", "token_pieces"]


@dataclass(frozen=True)
class Inspection:
    """One prompt through one model. ``T`` tokens, ``L`` layers, ``H`` heads, top ``k``."""

    text: str
    model_summary: str  # e.g. "GPTModel: 4 layers x 4 heads, emb_dim 128, vocab 50257"
    token_ids: list[int]
    pieces: list[bytes]  # each token's bytes: b"".join(pieces) is the text's UTF-8
    spans: list[tuple[int, int]]  # each token's [start, end) in b"".join(pieces)
    # [L, H, T, T]: row i is where query i looks (rows sum to 1). H is the most heads of any
    # layer: a layer with fewer (a hybrid's linear layers may have more heads than its attention
    # layers) fills the heads it lacks with NaN; ``heads`` says how many each layer has.
    attentions: torch.Tensor
    top_ids: torch.Tensor  # [T, k]: the most likely next tokens after each position
    top_probs: torch.Tensor  # [T, k]: their probabilities
    surprisal: torch.Tensor  # [T - 1]: -ln p(token i + 1 | tokens <= i), in nats
    lens_top_ids: torch.Tensor  # [L + 1, T, k]: the logit lens's top tokens per layer
    lens_top_probs: torch.Tensor  # [L + 1, T, k]
    lens_target_probs: torch.Tensor  # [L + 1, T - 1]: p the lens gives the real next token
    residual_norms: torch.Tensor  # [L + 1, T]: row 0 is the embedding, row l block l's input
    update_norms: torch.Tensor  # [L, T]: the norm of what block l adds to the stream
    final_norms: torch.Tensor  # [T]: the norm of the final norm's output (the head's input)
    vocab: dict[int, bytes]  # the bytes of every id above: tokens, top-k, lens
    sink_shares: torch.Tensor | None = None  # [L, H, T]: attention no token got (its sink's)
    heads: tuple[int, ...] = ()  # each layer's number of heads (empty: every layer has H)

    def heads_of(self, layer: int) -> int:
        """How many heads layer ``layer`` has (its maps are ``attentions[layer, :heads]``)."""
        return self.heads[layer] if self.heads else self.n_heads

    @property
    def has_sinks(self) -> bool:
        """Whether some head gave attention to a sink: a share above float rounding (1e-4)."""
        return self.sink_shares is not None and bool((self.sink_shares > 1e-4).any())

    @property
    def n_layers(self) -> int:
        return self.attentions.shape[0]

    @property
    def n_heads(self) -> int:
        return self.attentions.shape[1]

    @property
    def embedding_norms(self) -> torch.Tensor:
        """[T]: the norm of each token's embedding, the residual stream before block 0."""
        return self.residual_norms[0]


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[bytes]:
    """The bytes of each token id: a BPE token may hold part of a UTF-8 character."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise type_error("ids", f"ids must be a sequence of int token ids, got {ids!r:.80}")
    if not callable(getattr(tokenizer, "decode_single_token_bytes", None)) and not callable(
            getattr(tokenizer, "decode", None)):
        raise type_error("tokenizer", f"tokenizer must have decode_single_token_bytes(id) or "
                                      f"decode(ids), got {type(tokenizer).__name__}")
    single = getattr(tokenizer, "decode_single_token_bytes", None)
    if single is not None:
        return [bytes(single(i)) for i in ids]
    return [tokenizer.decode([i]).encode("utf-8") for i in ids]


def logit_lens(model: nn.Module, residuals: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What each residual stream [B, T, emb] predicts: ``out_head(final_norm(r))`` [B, T, V].

    For the last block's output this is the model's own logits; for earlier layers it asks
    what the model would say if the remaining blocks added nothing (nostalgebraist, 2020).
    """
    check_instance("model", model, nn.Module, "an nn.Module with final_norm and out_head")
    if not all(isinstance(getattr(model, n, None), nn.Module) for n in ("final_norm", "out_head")):
        raise type_error("model", f"model must have final_norm and out_head (a GPTModel or a "
                                  f"modern decoder), got {type(model).__name__}")
    if isinstance(residuals, torch.Tensor) or not isinstance(residuals, Sequence):
        raise type_error("residuals", f"residuals must be a sequence of [B, T, emb] tensors, got "
                                      f"{type(residuals).__name__}")
    for stream in residuals:
        check_tensor("residuals", stream, kind="floating", dims=3)
    with torch.no_grad():
        return [model.out_head(model.final_norm(stream)) for stream in residuals]


def _as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 (as ``calc_loss_batch`` takes them); others as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(_as_float(logits), dim=-1)


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, allowed_special="all"))
    except TypeError:  # a tokenizer without tiktoken's special-token switch
        return list(tokenizer.encode(text))


def _check(model: Any, tokenizer: Any, text: Any, top_k: Any) -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "trace", None)):
        raise type_error("model", f"model must implement trace(idx) -> ModelTrace "
                                  f"(gpt_components.inspect.trace), got {type(model).__name__}")
    cfg = getattr(model, "cfg", None)
    if not all(isinstance(getattr(cfg, n, None), int) for n in ("context_length", "vocab_size")):
        raise type_error("model", f"model must have a cfg with context_length and vocab_size, "
                                  f"got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise value_error("model", "model must have parameters, got none")
    if not callable(getattr(tokenizer, "encode", None)):
        raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                      f"{type(tokenizer).__name__}")
    check_str("text", text, empty=True)
    check_int("top_k", top_k, low=1)


def inspect_prompt(model: nn.Module, tokenizer: Any, text: str, top_k: int = 5) -> Inspection:
    """Trace ``text`` through ``model`` and gather what the report draws (see ``Inspection``)."""
    _check(model, tokenizer, text, top_k)
    ids = _encode(tokenizer, text)
    if not ids:
        raise value_error("text", "text must encode to at least one token, got an empty prompt")
    cfg = model.cfg
    if len(ids) > cfg.context_length:
        raise value_error("text", f"text encodes to {len(ids)} tokens, more than the model's "
                                  f"context_length={cfg.context_length}")
    top_k = min(top_k, cfg.vocab_size)
    device = next(model.parameters()).device
    trace = model.trace(torch.tensor([ids], device=device))
    targets = torch.tensor(ids[1:], dtype=torch.long, device=device)
    top_probs, top_ids = _probabilities(trace.logits[0]).topk(top_k, dim=-1)
    lens_ids, lens_probs, lens_target = [], [], []
    with torch.no_grad():
        for stream in trace.residuals:  # one layer at a time: [T, V] each, never [L, T, V]
            probs = _probabilities(logit_lens(model, [stream[:1]])[0][0])  # (T, V)
            best_probs, best_ids = probs.topk(top_k, dim=-1)
            lens_ids.append(best_ids)
            lens_probs.append(best_probs)
            lens_target.append(probs[:-1].gather(-1, targets[:, None])[:, 0])
        final = model.final_norm(trace.residuals[-1][0])  # (T, emb)
    residuals = torch.stack([stream[0] for stream in trace.residuals])  # (L + 1, T, emb)
    shown = {*ids, *top_ids.flatten().tolist(), *torch.stack(lens_ids).flatten().tolist()}
    pieces = token_pieces(tokenizer, ids)
    ends = torch.tensor([len(piece) for piece in pieces]).cumsum(0).tolist()
    heads = [weights.shape[1] for weights in trace.attentions]
    attentions = _stacked([weights[0] for weights in trace.attentions])  # (L, H, T, T)
    shares = _stacked([share[0] for share in trace.sink_shares]).double().cpu()  # (L, H, T)
    summary = (f"{type(model).__name__}: {cfg.n_layers} layers x {cfg.n_heads} heads, "
               f"emb_dim {cfg.emb_dim}, vocab {cfg.vocab_size}")
    if len(set(heads)) > 1:
        summary += f" (heads by layer: {', '.join(map(str, heads))})"
    if bool((shares > 1e-4).any()):  # above float rounding: the heads have sinks
        by_layer = [shares[layer, :h].mean() for layer, h in enumerate(heads)]
        summary += (f"; attention sinks take {torch.stack(by_layer).mean():.1%} of the attention "
                    "(by layer: " + ", ".join(f"{share:.0%}" for share in by_layer) + ")")
    return Inspection(
        text=text,
        model_summary=summary,
        token_ids=ids,
        pieces=pieces,
        spans=[(end - len(piece), end) for piece, end in zip(pieces, ends, strict=True)],
        attentions=attentions.cpu(),
        top_ids=top_ids.cpu(),
        top_probs=top_probs.cpu(),
        surprisal=F.cross_entropy(_as_float(trace.logits[0, :-1]), targets, reduction="none").cpu(),
        lens_top_ids=torch.stack(lens_ids).cpu(),
        lens_top_probs=torch.stack(lens_probs).cpu(),
        lens_target_probs=torch.stack(lens_target).cpu(),
        residual_norms=residuals.norm(dim=-1).cpu(),
        update_norms=residuals.diff(dim=0).norm(dim=-1).cpu(),
        final_norms=final.norm(dim=-1).cpu(),
        vocab=dict(zip(sorted(shown), token_pieces(tokenizer, sorted(shown)), strict=True)),
        sink_shares=shares,
        heads=tuple(heads) if len(set(heads)) > 1 else (),
    )


def _stacked(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """Layers' [H_l, ...] tensors as one [L, max H_l, ...]: the heads a layer lacks are NaN."""
    most = max(t.shape[0] for t in per_layer)
    return torch.stack([torch.cat([t, t.new_full((most - t.shape[0], *t.shape[1:]), math.nan)])
                        for t in per_layer])
