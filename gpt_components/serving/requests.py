"""What a request to the serving engine asks for, and what the engine hands back each step.

``SamplingParams`` holds one request's settings, checked when made: ``temperature`` (0 is
greedy), ``top_k``, ``top_p`` (the order of ``generation.sample_next_token``: top-k, then
top-p, then temperature), ``max_tokens`` new tokens at most, ``stop_token_ids`` (a token that
ends the request and is not returned, as ``generate``'s ``eos_id``), ``stop`` strings (the
engine needs a tokenizer for them; the text from the one that matches on is not returned)
and ``seed`` (a request's own ``torch.Generator``, so it draws what ``generate`` draws for it
alone with that seed; None seeds it at random, as an API server without a seed does).

``RequestOutput`` is one request's news from one ``Engine.step``: the tokens it got this step,
all its tokens so far, and whether (and why) it finished: ``"stop"`` (a stop token or string),
``"length"`` (``max_tokens`` reached) or ``"abort"`` (``Engine.abort``).

>>> params = SamplingParams(temperature=0.0, max_tokens=4, stop_token_ids=(50256,))
>>> params.greedy
True
>>> try:
...     SamplingParams(top_p=1.5)
... except ValueError as error:
...     print(error.parameter, "|", error)
top_p | top_p must be a float in (0, 1] or None, got 1.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..machinery.checks import check_float, check_int, check_str, type_error

__all__ = ["SamplingParams", "RequestOutput", "FINISH_REASONS", "tokens_before_stop",
           "tokens_safe_from_stop"]

#: Why a request ended: a stop token or string, ``max_tokens`` reached, or an abort.
FINISH_REASONS = ("stop", "length", "abort")


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings (checked on construction, as ``generate`` checks them)."""

    temperature: float = 1.0  # 0: greedy (the argmax), as in generate
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    top_p: float | None = None  # then the smallest set reaching this mass (None: all)
    max_tokens: int = 16  # new tokens at most (the stop token, if any, is not counted)
    stop_token_ids: tuple[int, ...] = ()  # tokens that end the request, not returned
    stop: tuple[str, ...] = ()  # strings that end the request (needs the engine's tokenizer)
    seed: int | None = None  # this request's own generator's seed; None: a random one

    def __post_init__(self) -> None:
        check_float("temperature", self.temperature, low=0)
        check_int("top_k", self.top_k, low=1, optional=True)
        check_float("top_p", self.top_p, low=0, high=1, low_open=True, optional=True)
        check_int("max_tokens", self.max_tokens, low=1)
        check_int("seed", self.seed, optional=True)
        # Lists are welcome (a JSON body gives lists); kept as tuples, so the object stays hashable.
        object.__setattr__(self, "stop_token_ids", _tuple_of("stop_token_ids",
                                                             self.stop_token_ids))
        object.__setattr__(self, "stop", _tuple_of("stop", self.stop))
        for token in self.stop_token_ids:
            check_int("stop_token_ids", token, low=0)
        for text in self.stop:
            check_str("stop", text)

    @property
    def greedy(self) -> bool:
        """Whether the request takes the argmax (``temperature == 0``)."""
        return self.temperature == 0


def _tuple_of(name: str, value: object) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise type_error(name, f"{name} must be a tuple or list, got {type(value).__name__}")
    return tuple(value)


@dataclass
class RequestOutput:
    """One request's tokens after an engine step."""

    request_id: str
    new_token_ids: list[int]  # the tokens it got in this step (maybe none when it finishes)
    token_ids: list[int] = field(default_factory=list)  # every token generated so far
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" once finished, else None
    # Tokens the model made so far: ``token_ids`` and any it made past them (the end id that
    # stopped it, the tokens a stop string took back). None: as many as ``token_ids``.
    num_generated: int | None = None


def _tokens_within(tokens: Sequence[int], chars: int, tokenizer: Any) -> int:
    """The most leading tokens whose text fits in the first ``chars`` characters."""
    keep = len(tokens)
    while keep > 0 and len(tokenizer.decode(list(tokens[:keep]))) > chars:
        keep -= 1
    return keep


def tokens_before_stop(tokens: Sequence[int], stop: Sequence[str], tokenizer: Any) -> int | None:
    """How many of ``tokens`` to keep when their text holds a stop string: those before the
    token in which the first stop string begins (a token is never split). None: no stop."""
    text = tokenizer.decode(list(tokens))
    found = [text.find(s) for s in stop if s in text]
    return None if not found else _tokens_within(tokens, min(found), tokenizer)


def tokens_safe_from_stop(tokens: Sequence[int], stop: Sequence[str], tokenizer: Any) -> int:
    """How many leading ``tokens`` no stop string can take back: those whose text ends before
    the longest end of the text that begins a stop string (held back until it is decided)."""
    text = tokenizer.decode(list(tokens))
    held = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return len(tokens) if not held else _tokens_within(tokens, len(text) - held, tokenizer)
