"""Token and positional embeddings (chapter 2): what the GPT model reads instead of token ids.

``GPTEmbedding(vocab_size, emb_dim, context_length, drop_rate=0.0)`` holds the book's
``tok_emb`` (one learned vector per token id) and ``pos_emb`` (one learned vector per position,
GPT-2's absolute positions), adds them and applies dropout ``drop_emb``:
``out[b, t] = tok_emb.weight[ids[b, t]] + pos_emb.weight[t]``.

>>> layer = GPTEmbedding(vocab_size=50257, emb_dim=256, context_length=4)
>>> ids = torch.tensor([[40, 367, 2885, 1464], [1807, 3619, 402, 271]])
>>> layer(ids).shape
torch.Size([2, 4, 256])
"""

from __future__ import annotations

import torch
from torch import nn

from .machinery.checks import check_float, check_instance, check_int, check_tensor, value_error

__all__ = ["GPTEmbedding"]


class GPTEmbedding(nn.Module):
    """Token embedding plus learned absolute positional embedding, then dropout.

    Pass a ``generator`` to draw the initial weights (standard normal, like ``nn.Embedding``)
    from it instead of torch's global random state.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        context_length: int,
        drop_rate: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        check_int("vocab_size", vocab_size, low=1)
        check_int("emb_dim", emb_dim, low=1)
        check_int("context_length", context_length, low=1)
        check_float("drop_rate", drop_rate, low=0, high=1)
        if generator is not None:
            check_instance("generator", generator, torch.Generator, "a torch.Generator or None")
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, emb_dim)
        self.pos_emb = nn.Embedding(context_length, emb_dim)
        self.drop_emb = nn.Dropout(drop_rate)
        if generator is not None:
            with torch.no_grad():
                nn.init.normal_(self.tok_emb.weight, generator=generator)
                nn.init.normal_(self.pos_emb.weight, generator=generator)

    def _check_ids(self, in_idx: object) -> None:
        check_tensor("in_idx", in_idx, kind="integer")
        if in_idx.dim() != 2:
            raise value_error("in_idx", f"in_idx must be 2-D (batch, tokens), got shape "
                                        f"{tuple(in_idx.shape)}")
        context_length = self.pos_emb.num_embeddings
        if in_idx.shape[1] > context_length:
            raise value_error("in_idx", f"in_idx has {in_idx.shape[1]} tokens, more than "
                                        f"context_length={context_length}")
        vocab_size = self.tok_emb.num_embeddings
        # .item() cannot be traced: under torch.compile the range check is left out.
        if in_idx.numel() and not torch.compiler.is_compiling():
            low, high = in_idx.min().item(), in_idx.max().item()
            if low < 0 or high >= vocab_size:
                bad = low if low < 0 else high
                raise value_error("in_idx", f"in_idx contains the token id {bad}, outside "
                                            f"0..{vocab_size - 1} (vocab_size={vocab_size})")

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        self._check_ids(in_idx)
        if in_idx.dtype not in (torch.int32, torch.int64):
            in_idx = in_idx.long()  # nn.Embedding indexes with int32 or int64 only
        num_tokens = in_idx.shape[1]
        tok_embeds = self.tok_emb(in_idx)  # (B, T) -> (B, T, emb_dim)
        pos_embeds = self.pos_emb(torch.arange(num_tokens, device=in_idx.device))  # (T, emb_dim)
        return self.drop_emb(tok_embeds + pos_embeds)  # broadcast over the batch
