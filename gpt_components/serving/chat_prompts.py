"""The prompt a conversation renders to, for any model the server or the terminal chat serves.

Instruct weights (Llama 3, Qwen3, Gemma 3, ...) were tuned on their family's chat format
(``modern.chat``), and ``chat_format_for`` finds it by the special tokens of the tokenizer. The
book's chapter-7 model was tuned on something else: single Alpaca exchanges,
``format_input(entry)`` + ``format_response(entry)`` + ``<|endoftext|>``, with a tokenizer
(GPT-2's, or a learned BPE) that has no chat tokens at all. ``InstructionChatFormat`` writes a
conversation in that form, so the book's instruction-finetuned GPT-2 chats too:

- each earlier exchange is a whole training example: the Alpaca prompt of the user's message, its
  ``### Response:`` with the assistant's answer, and ``<|endoftext|>``, exactly as the model saw
  examples packed one after another while it was tuned;
- the last user message is an Alpaca prompt followed by an open ``\\n\\n### Response:\\n``, so
  what the model writes next is the answer alone (the book lets the model write that header and
  cuts it off afterwards: the same tokens, once the header is greedy);
- a system message has no place in the Alpaca format: its text and a blank line open the
  conversation, before the first preamble;
- the answer ends at ``<|endoftext|>`` (``stop_ids``) or where the model starts a new
  ``### Instruction:`` on its own (``stop_strings``).

``chat_prompt_for(tokenizer)`` is the family's format when the tokenizer has one, else this one.
Both render, encode and list their stop ids the same way (``render``, ``encode``,
``stop_ids``, ``stop_strings``).

>>> chat = InstructionChatFormat()
>>> text = chat.render([{"role": "user", "content": "Name a colour."},
...                     {"role": "assistant", "content": "Blue."},
...                     {"role": "user", "content": "Another?"}])
>>> print(text[text.index("### Instruction:"):text.index("Below", 1)])
### Instruction:
Name a colour.
<BLANKLINE>
### Response:
Blue.<|endoftext|>
>>> text.count("### Instruction:"), text.endswith("Another?\\n\\n### Response:\\n")
(2, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..finetune.instructions import format_input, format_response
from ..machinery.checks import check_bool, did_you_mean, type_error, value_error
from ..modern.chat import chat_format_for
from ..tokenizers import ENDOFTEXT

__all__ = ["InstructionChatFormat", "chat_prompt_for"]

_ROLES = ("system", "user", "assistant")
_OPEN_RESPONSE = "\n\n### Response:\n"  # format_response's header, with no output after it


class InstructionChatFormat:
    """A conversation as chapter 7's Alpaca exchanges (see the module's docstring)."""

    stop_strings: tuple[str, ...] = ("\n\n### Instruction:",)

    def _pieces(self, messages: Any, add_generation_prompt: bool) -> list[tuple[bool, str]]:
        """(special?, text) pieces: ``<|endoftext|>`` special, every message's text ordinary."""
        messages = _check_turns(messages, check_bool("add_generation_prompt",
                                                     add_generation_prompt))
        pieces: list[tuple[bool, str]] = []
        if messages[0]["role"] == "system":
            pieces.append((False, messages[0]["content"] + "\n\n"))
            messages = messages[1:]
        for index in range(0, len(messages), 2):
            entry = {"instruction": messages[index]["content"], "output": ""}
            answer = messages[index + 1] if index + 1 < len(messages) else None
            pieces.append((False, format_input(entry)))
            if answer is None:
                if add_generation_prompt:
                    pieces.append((False, _OPEN_RESPONSE))
            else:
                pieces += [(False, format_response({**entry, "output": answer["content"]})),
                           (True, ENDOFTEXT)]
        return pieces

    def render(self, messages: Sequence[Mapping[str, Any]], *,
               add_generation_prompt: bool = True) -> str:
        """The conversation as text, ending with an open ``### Response:`` when
        ``add_generation_prompt`` and the last message is the user's."""
        return "".join(text for _, text in self._pieces(messages, add_generation_prompt))

    def encode(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]], *,
               add_generation_prompt: bool = True) -> list[int]:
        """Ids of ``render(messages)``: ``<|endoftext|>`` as its special id, every message as
        ordinary text (a user who types ``<|endoftext|>`` ends nothing)."""
        pieces = self._pieces(messages, add_generation_prompt)
        if not callable(getattr(tokenizer, "encode", None)):
            raise type_error("tokenizer", f"tokenizer must be a tiktoken-style encoding, got "
                                          f"{type(tokenizer).__name__}")
        ids: list[int] = []
        for special, text in pieces:
            if special:
                ids += tokenizer.encode(text, allowed_special={text})
            else:
                ids += tokenizer.encode(text, disallowed_special=())
        return ids

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """The end-of-text id every tuned answer ends with (none if the tokenizer has none)."""
        if ENDOFTEXT not in getattr(tokenizer, "special_tokens_set", ()):
            return []
        return tokenizer.encode(ENDOFTEXT, allowed_special={ENDOFTEXT})


def _check_turns(messages: Any, open_turn: bool) -> list[Mapping[str, Any]]:
    """An optional system message, then user and assistant messages alternating, ending with
    the user's when an answer is asked for (``open_turn``)."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise type_error("messages", f"messages must be a list of {{'role', 'content'}} dicts, "
                                     f"got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise type_error("messages", f"messages[{index}] must be a dict, got "
                                         f"{type(message).__name__}")
        role = message.get("role")
        if role not in _ROLES:
            raise value_error("messages", f"messages[{index}]['role'] must be one of "
                                          f"{', '.join(_ROLES)}, got {role!r}"
                                          f"{did_you_mean(role, _ROLES)}")
        if not isinstance(message.get("content"), str):
            raise type_error("messages", f"messages[{index}]['content'] must be a str, got "
                                         f"{type(message.get('content')).__name__}")
    turns = list(messages[1:] if messages and messages[0]["role"] == "system" else messages)
    if not turns:
        raise value_error("messages", "messages must hold at least one user message, got "
                                      f"{len(messages)} message(s) and none from the user")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise value_error("messages", f"messages must alternate user / assistant after an "
                                          f"optional system message; turn {index} is "
                                          f"{message['role']!r}")
    if open_turn and turns[-1]["role"] != "user":
        raise value_error("messages", "messages must end with a user message for the model to "
                                      "answer, got an assistant message last")
    return list(messages)


def chat_prompt_for(tokenizer: Any) -> Any:
    """The chat format of the tokenizer's family (Llama 3's, Qwen3's, Gemma 3's, ...), or, for
    a tokenizer without chat tokens (GPT-2's, a learned BPE), chapter 7's instruction format."""
    try:
        return chat_format_for(tokenizer)
    except ValueError:
        return InstructionChatFormat()
