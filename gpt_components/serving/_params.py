"""The engine contract's two records, held here until ``serving/requests.py`` lands.

``SamplingParams`` is what a request asks for; ``RequestOutput`` is what a step of an engine
says about one request. Every engine (the batched one, ``SequentialEngine``) takes the first and
returns the second, so the server is written against them and not against any one engine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SamplingParams", "RequestOutput"]


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops (``temperature`` 0 is greedy)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class RequestOutput:
    """One request after a step: the ids it got this step, all its new ids so far, and whether
    (and why: ``"stop"``, ``"length"``, ``"abort"``) it has finished."""

    request_id: str
    new_token_ids: list[int]
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
