"""GPT-OSS's tokens and conversations: o200k with the harmony special tokens, the harmony format.

**The tokenizer.** GPT-OSS reads ``o200k_harmony``: the byte-level BPE of GPT-4o (``o200k_base``:
199,998 ranks, pre-tokenized by ``O200K_PATTERN``, which keeps a word's case changes and its
contraction together and cuts digit runs into threes) with the harmony special tokens at
ids 199,998 to 201,087 (``HARMONY_SPECIAL_TOKENS``: ``<|start|>``, ``<|message|>``,
``<|channel|>``, ``<|end|>``, ``<|return|>``, ``<|call|>``, ... and reserved slots).
``o200k_harmony_tokenizer(source)`` builds it from ``o200k_base``'s ranks (a tiktoken-format
file, or tiktoken's own download when it is already cached: tiktoken fetches the file from the
network on first use, and this project never does) or from a model directory's
``tokenizer.json`` (what the published checkpoints ship), through ``modern.tokenizers``.

**The chat format.** Harmony writes each message as ``<|start|>{role}<|message|>{text}<|end|>``;
an assistant message names its *channel*: ``analysis`` (the chain of thought), ``commentary``
(tool calls) or ``final`` (the answer). Every conversation opens with a system message the
template writes itself (identity, knowledge cutoff, date, reasoning effort, the valid
channels); a conversation's own system message becomes the *developer* message (``# Instructions``).
Earlier turns' reasoning is dropped; an assistant message that closes a conversation (training
data) keeps its ``thinking`` as an analysis message and ends with ``<|return|>``. The generation
prompt is ``<|start|>assistant``: the model writes the channel itself. ``HarmonyChatFormat``
writes this as the published template does (tools are not supported).

>>> chat = HarmonyChatFormat(date="2026-12-07", reasoning_effort="low")
>>> text = chat.render([{"role": "user", "content": "Hi"}])
>>> text.splitlines()[4], text.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant")
('Reasoning: low', True)
>>> HARMONY_SPECIAL_TOKENS["<|start|>"], len(HARMONY_SPECIAL_TOKENS)
(200006, 1090)
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..machinery.checks import check_choice, check_instance, check_str, type_error, value_error
from ..modern.chat import Pieces, _ChatFormat
from ..modern.tokenizers import HFTokenizer, load_tokenizer, read_tiktoken_model
from ..tokenizers import GPT2Encoding

__all__ = ["O200K_PATTERN", "HARMONY_SPECIAL_TOKENS", "o200k_harmony_tokenizer",
           "HarmonyChatFormat"]

# o200k's pre-tokenization: a word is an optional non-letter, then its upper-case run and its
# lower-case run (so "HTTPRequest" splits before "Request") with any contraction; digit runs of
# at most three; symbol runs with the newlines (or slashes) after them; newlines; other spaces.
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
_O200K_RANKS = 199998  # o200k_base's mergeable ranks; the specials follow
_NAMED = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>",
          200003: "<|constrain|>", 200005: "<|channel|>", 200006: "<|start|>",
          200007: "<|end|>", 200008: "<|message|>", 200012: "<|call|>",
          200018: "<|endofprompt|>"}
# Every id from 199,998 to 201,087 (the embedding's 201,088 rows): named, or reserved.
HARMONY_SPECIAL_TOKENS: dict[str, int] = {
    _NAMED.get(i, f"<|reserved_{i}|>"): i for i in range(_O200K_RANKS, 201088)}
_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def _tiktoken_cached_ranks() -> Path | None:
    """Where tiktoken keeps ``o200k_base`` once downloaded (its cache rule), if it is there."""
    directory = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(
        "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    if not directory:
        return None
    path = Path(directory) / hashlib.sha1(_O200K_URL.encode()).hexdigest()
    return path if path.is_file() else None


def o200k_harmony_tokenizer(source: str | os.PathLike[str] | None = None
                            ) -> GPT2Encoding | HFTokenizer:
    """GPT-OSS's tokenizer, from ``source``: a model directory (its ``tokenizer.json``), a
    tiktoken-format ``o200k_base`` ranks file, or None: tiktoken's cached ``o200k_base``.

    Without a source and without tiktoken's cached file (it downloads it on first use; nothing
    here touches the network), raises ValueError saying so.
    """
    if source is None:
        source = _tiktoken_cached_ranks()
        if source is None:
            raise value_error("source", "source must be a model directory or an o200k_base "
                                        "ranks file: tiktoken's o200k_base ranks are not "
                                        "available offline (not in its cache)")
    check_instance("source", source, (str, os.PathLike), "a path (str or os.PathLike) or None")
    path = Path(source)
    if path.is_dir():
        tokenizer = load_tokenizer(path)
        missing = sorted({"<|start|>", "<|message|>", "<|end|>", "<|channel|>"}
                         - tokenizer.special_tokens_set)
        if missing:
            raise value_error("source", f"source {str(path)!r} holds no harmony tokenizer: it "
                                        f"lacks {', '.join(missing)}")
        return tokenizer
    ranks = read_tiktoken_model(path)
    if len(ranks) != _O200K_RANKS:
        raise value_error("source", f"source must hold o200k_base's {_O200K_RANKS} ranks, got "
                                    f"{len(ranks)} in {str(path)!r}")
    return GPT2Encoding(name="o200k_harmony", pat_str=O200K_PATTERN, mergeable_ranks=ranks,
                        special_tokens=HARMONY_SPECIAL_TOKENS)


class HarmonyChatFormat(_ChatFormat):
    """OpenAI's harmony format as GPT-OSS's published chat template writes it (no tools).

    ``reasoning_effort``: ``"low"``, ``"medium"`` or ``"high"`` (the system message's
    ``Reasoning:`` line); ``model_identity``: its first line; ``date``: its ``Current date:``
    (``YYYY-MM-DD``; None: today, as the template's ``strftime_now``). An assistant message
    may carry ``thinking`` (its analysis-channel text), written only when it closes the
    conversation without a generation prompt.
    """

    stop_tokens = ("<|return|>", "<|call|>")
    late_system = False  # the template drops a later system message: refused, not dropped

    def __init__(self, reasoning_effort: str = "medium",
                 model_identity: str = "You are ChatGPT, a large language model trained by "
                                       "OpenAI.",
                 date: str | None = None) -> None:
        self.reasoning_effort = check_choice("reasoning_effort", reasoning_effort,
                                             ("low", "medium", "high"))
        self.model_identity = check_str("model_identity", model_identity)
        self.date = check_str("date", date, optional=True)
        if date is not None:
            try:
                datetime.date.fromisoformat(date)
            except ValueError:
                raise value_error("date", f"date must be YYYY-MM-DD, got {date!r}") from None

    @staticmethod
    def _message(role: str, body: str, end: str = "<|end|>", channel: str | None = None) -> Pieces:
        head: Pieces = [(True, "<|start|>"), (False, role)]
        if channel is not None:
            head += [(True, "<|channel|>"), (False, channel)]
        return [*head, (True, "<|message|>"), (False, body), (True, end)]

    def _system(self) -> str:
        date = self.date or datetime.datetime.now().strftime("%Y-%m-%d")
        return (f"{self.model_identity}\nKnowledge cutoff: 2024-06\nCurrent date: {date}\n\n"
                f"Reasoning: {self.reasoning_effort}\n\n# Valid channels: analysis, commentary, "
                f"final. Channel must be included for every message.")

    @staticmethod
    def _check_assistant(index: int, message: Mapping[str, Any]) -> None:
        thinking = message.get("thinking")
        if "thinking" in message and not isinstance(thinking, str):
            raise type_error("messages", f"messages[{index}]['thinking'] must be a str, got "
                                         f"{type(thinking).__name__}")
        for key in ("content", "thinking"):
            text = message.get(key) or ""
            if "<|channel|>analysis<|message|>" in text or "<|channel|>final<|message|>" in text:
                raise value_error("messages", f"messages[{index}][{key!r}] must not hold "
                                              f"<|channel|> tags: pass the analysis text as "
                                              f"'thinking' and the answer as 'content'")

    def _pieces(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool) -> Pieces:
        pieces = self._message("system", self._system())
        first = 0
        if messages[0]["role"] == "system":
            first = 1
            if messages[0]["content"]:
                pieces += self._message("developer",
                                        "# Instructions\n\n" + messages[0]["content"])
        for index in range(first, len(messages)):
            message = messages[index]
            if message["role"] == "user":
                pieces += self._message("user", message["content"])
                continue
            self._check_assistant(index, message)
            if index == len(messages) - 1 and not add_generation_prompt:  # training data
                if "thinking" in message:
                    pieces += self._message("assistant", message["thinking"],
                                            channel="analysis")
                pieces += self._message("assistant", message["content"], "<|return|>", "final")
            else:  # earlier turns' reasoning is dropped
                pieces += self._message("assistant", message["content"], channel="final")
        if add_generation_prompt:
            pieces += [(True, "<|start|>"), (False, "assistant")]
        return pieces
