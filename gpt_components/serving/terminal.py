"""Chatting in the terminal: ``gpt-components chat SOURCE``, multi-turn, the answer streamed.

``chat_in_terminal`` reads one message a line, renders the whole conversation in the model's
chat format (``chat_prompt_for``: the family's, or chapter 7's instruction format), hands it to
an engine and prints the answer as its tokens arrive. The conversation grows every turn and the
model's context does not: when the rendered conversation and the answer's ``max_tokens`` would
pass it, the oldest exchange (a user message and its answer) leaves the history, then the next
oldest, and a line on ``err`` says so; the system message always stays. A message too long for
the context alone is refused in a line, and the conversation goes on.

Commands: ``/reset`` forgets the conversation, ``/exit`` (or the end of input, Ctrl-D) ends it.
Ctrl-C while an answer is written stops that answer (the engine aborts it; what was written
stays in the history); at the prompt it ends the chat. With stdin piped, every line is a message
and each answer is printed on its own line(s) after it, so a script can drive it.

>>> import io
>>> from gpt_components.bpe import BPETokenizer
>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.serving import SequentialEngine
>>> tokenizer = BPETokenizer.train("the cat sat on the mat", vocab_size=262)
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=tokenizer.n_vocab,
...                                      context_length=256))
>>> out = io.StringIO()
>>> turns = chat_in_terminal(SequentialEngine(model, tokenizer=tokenizer), tokenizer,
...                          context_length=256, stdin=io.StringIO("hello\\nagain\\n"), out=out,
...                          max_tokens=4, temperature=0)
>>> turns
2
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..machinery.checks import check_int, check_str, value_error
from .answer_text import AnswerText
from .chat_prompts import chat_prompt_for
from .requests import SamplingParams

__all__ = ["chat_in_terminal", "TerminalChat"]


@dataclass
class TerminalChat:
    """A conversation that fits a context: the system message, then the exchanges kept."""

    tokenizer: Any
    context_length: int
    max_tokens: int
    system: str | None = None
    chat_format: Any = None
    history: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int("context_length", self.context_length, low=2)
        check_int("max_tokens", self.max_tokens, low=1)
        check_str("system", self.system, empty=True, optional=True)
        if self.chat_format is None:
            self.chat_format = chat_prompt_for(self.tokenizer)

    def messages(self, message: str, history: list[dict[str, str]] | None = None
                 ) -> list[dict[str, str]]:
        """The system message, ``history`` (the kept one by default) and ``message``."""
        history = self.history if history is None else history
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*system, *history, {"role": "user", "content": message}]

    def prompt(self, message: str) -> tuple[list[int], int, int]:
        """(prompt ids, the answer's max tokens, exchanges dropped) for the next answer.

        The oldest exchanges leave while the prompt and ``max_tokens`` pass the context; a
        prompt that fits only with a shorter answer gets one. Raises ValueError (parameter
        ``message``) when the message does not fit even alone, keeping the history as it was.
        """
        kept = list(self.history)
        while True:
            ids = self.chat_format.encode(self.tokenizer, self.messages(message, kept))
            if len(ids) + self.max_tokens <= self.context_length or not kept:
                break
            del kept[:2]  # the oldest user message and its answer
        room = self.context_length - len(ids)
        if room < 1:
            raise value_error("message", f"the message makes a prompt of {len(ids)} tokens, and "
                                         f"the context holds {self.context_length}: shorten it")
        dropped = (len(self.history) - len(kept)) // 2
        self.history = kept
        return ids, min(self.max_tokens, room), dropped

    def stop(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The stop strings and end ids of the format (and the tokenizer's end of text)."""
        ids = set(self.chat_format.stop_ids(self.tokenizer))
        eot = getattr(self.tokenizer, "eot_token", None)
        ids |= set() if eot is None else {eot}
        return tuple(getattr(self.chat_format, "stop_strings", ())), tuple(sorted(ids))


def chat_in_terminal(engine: Any, tokenizer: Any, *, context_length: int,
                     stdin: TextIO | None = None, out: TextIO | None = None,
                     err: TextIO | None = None,
                     system: str | None = None, max_tokens: int = 256, temperature: float = 0.7,
                     top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None) -> int:
    """Chat until ``/exit`` or the end of ``stdin``; returns the number of answers written.

    ``seed`` (with ``temperature`` > 0) makes the whole conversation repeatable: answer ``i``
    samples with ``seed + i``.
    """
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    chat = TerminalChat(tokenizer, context_length, max_tokens, system)
    stop, stop_ids = chat.stop()
    interactive = stdin.isatty()
    answers = 0
    for number in itertools.count():
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            break
        message = line.rstrip("\n")
        if message.strip() == "/reset":
            chat.history.clear()
            err.write("(the conversation starts over)\n")
            continue
        if not message.strip():
            continue
        try:
            ids, room, dropped = chat.prompt(message)
        except ValueError as error:
            err.write(f"({error})\n")
            continue
        if dropped:
            err.write(f"(the oldest {dropped} exchange(s) left the history: the context holds "
                      f"{context_length} tokens)\n")
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                max_tokens=room, stop_token_ids=stop_ids, stop=stop,
                                seed=None if seed is None else seed + number)
        answer = _answer(engine, f"chat-{number}", ids, params, tokenizer, out)
        chat.history += [{"role": "user", "content": message},
                         {"role": "assistant", "content": answer}]
        answers += 1
    return answers


def _answer(engine: Any, request_id: str, ids: list[int], params: SamplingParams,
            tokenizer: Any, out: TextIO) -> str:
    """Stream one answer to ``out``; Ctrl-C stops it (what was written is the answer)."""
    text = AnswerText(params.stop, frozenset(params.stop_token_ids))
    engine.add_request(request_id, ids, params)
    try:
        while text.finish_reason is None and engine.has_unfinished():
            for output in engine.step():
                if output.request_id == request_id:
                    out.write(text.feed(output, tokenizer.decode))
                    out.flush()
    except KeyboardInterrupt:
        out.write(" (stopped)")
    finally:
        if engine.has_unfinished():
            engine.abort(request_id)  # done, a stop string the engine missed, or Ctrl-C
    out.write("\n")
    out.flush()
    return text.text
