"""Chat formats of instruct weights: how a conversation becomes the tokens the model was tuned on.

An instruct model continues a conversation written in the format it was finetuned on, and stops
with that format's end-of-turn token; any other layout gives worse answers. Messages are dicts
``{"role": "system" | "user" | "assistant", "content": str}``, as in the published templates;
every format refuses an empty conversation. A system message after the first message is written
as the published template writes it where the model knows it (Llama 3 and Qwen3: a system turn
in the middle of the conversation) and refused where it does not (Gemma 3, whose template
refuses it or writes a ``system`` turn its model was never tuned on), instead of guessing.

- ``Llama3ChatFormat``: ``<|begin_of_text|>``, then per message
  ``<|start_header_id|>role<|end_header_id|>\\n\\n`` + stripped content + ``<|eot_id|>``; the
  generation prompt is an open assistant header. (Llama 3.1 / 3.2's published template also
  writes a "Cutting Knowledge Date" preamble into the system message: pass it as a system
  message to reproduce it.)
- ``Qwen3ChatFormat``: ChatML, ``<|im_start|>role\\n`` + content + ``<|im_end|>\\n``; the
  generation prompt ``<|im_start|>assistant\\n`` is followed by an empty
  ``<think>\\n\\n</think>\\n\\n`` block when thinking is switched off. An assistant turn after the
  last user message keeps its reasoning (``<think>...</think>``); earlier turns drop it.
- ``Gemma3ChatFormat``: ``<bos>``, then ``<start_of_turn>user\\n`` or ``<start_of_turn>model\\n``
  + stripped content + ``<end_of_turn>\\n``; turns must alternate user / assistant, a system
  message has no turn of its own (its text and a blank line open the first user turn), and the
  generation prompt is an open ``model`` turn.

``render`` returns the text (what ``transformers``' ``apply_chat_template`` renders);
``encode`` returns the ids, with the format's markers as special tokens and every message's
content as ordinary text, so a user who types ``<|eot_id|>`` cannot end a turn.
``chat_format_for(tokenizer)`` picks the format by the special tokens the tokenizer has, and
``stop_ids(tokenizer)`` lists the ids that end an answer.

>>> chat = Qwen3ChatFormat(enable_thinking=False)
>>> chat.render([{"role": "user", "content": "Hi"}])
'<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n'
>>> Llama3ChatFormat().render([{"role": "user", "content": " Hi "}])
'<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|><|start_header_id|>\
assistant<|end_header_id|>\\n\\n'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ..machinery.checks import check_bool, did_you_mean, type_error, value_error

__all__ = ["Llama3ChatFormat", "Qwen3ChatFormat", "Gemma3ChatFormat", "chat_format_for"]

_ROLES = ("system", "user", "assistant")
# A rendered conversation is a list of pieces: (True, special-token name) or (False, text).
Pieces = list[tuple[bool, str]]


def _check_messages(messages: object, late_system: bool) -> list[Mapping[str, Any]]:
    """The conversation as a list, refused unless it holds at least one message, each a
    ``{"role", "content"}`` dict with a known role and str content; a system message after the
    first only where the format has a turn for it (``late_system``)."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise type_error("messages", f"messages must be a list of {{'role', 'content'}} dicts, "
                                     f"got {type(messages).__name__}")
    if not messages:
        raise value_error("messages", "messages must hold at least one message, got an empty "
                                      "list")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise type_error("messages", f"{where} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise value_error("messages", f"{where}['role'] must be one of {', '.join(_ROLES)}, "
                                          f"got {role!r}{did_you_mean(role, _ROLES)}")
        if role == "system" and index > 0 and not late_system:
            raise value_error("messages", f"{where} is a system message: a system message may "
                                          f"only come first, got one after {index} other(s)")
        for key in ("content", "reasoning_content"):
            value = message.get(key)
            if not isinstance(value, str) and (key == "content" or value is not None):
                raise type_error("messages", f"{where}[{key!r}] must be a str, got "
                                             f"{type(value).__name__}")
    return list(messages)


class _ChatFormat:
    """What both formats share: pieces -> text, pieces -> ids."""

    stop_tokens: tuple[str, ...] = ()
    #: Whether a system message may come after the first message (as a system turn of its own).
    late_system: bool = True

    def _pieces(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool) -> Pieces:
        raise NotImplementedError

    def render(self, messages: Sequence[Mapping[str, Any]], *,
               add_generation_prompt: bool = True) -> str:
        """The conversation as text, ending with an open assistant turn when
        ``add_generation_prompt`` (the prompt an answer continues)."""
        messages = _check_messages(messages, self.late_system)
        pieces = self._pieces(messages, check_bool("add_generation_prompt", add_generation_prompt))
        return "".join(text for _, text in pieces)

    def encode(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]], *,
               add_generation_prompt: bool = True) -> list[int]:
        """Ids of ``render(messages)``: markers as special ids, contents as ordinary text."""
        messages = _check_messages(messages, self.late_system)
        check_bool("add_generation_prompt", add_generation_prompt)
        self._check_tokenizer(tokenizer)
        ids: list[int] = []
        for special, text in self._pieces(messages, add_generation_prompt):
            if special:
                ids += tokenizer.encode(text, allowed_special={text})
            elif text:
                ids += tokenizer.encode(text, disallowed_special=())
        return ids

    def _check_tokenizer(self, tokenizer: Any) -> None:
        """``tokenizer`` must encode with ``allowed_special`` and have this format's markers."""
        specials = getattr(tokenizer, "special_tokens_set", None)
        if specials is None or not callable(getattr(tokenizer, "encode", None)):
            raise type_error("tokenizer", f"tokenizer must be a tiktoken-style encoding (encode, "
                                          f"special_tokens_set), got {type(tokenizer).__name__}")
        markers = self._pieces([{"role": "user", "content": ""}], True)
        missing = sorted({text for special, text in markers if special} - set(specials))
        if missing:
            raise value_error("tokenizer", f"tokenizer must have this format's special tokens; "
                                           f"it lacks {', '.join(missing)}")

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end the assistant's answer (those of ``stop_tokens`` the tokenizer has)."""
        self._check_tokenizer(tokenizer)
        names = [t for t in self.stop_tokens if t in tokenizer.special_tokens_set]
        return [tokenizer.encode(t, allowed_special={t})[0] for t in names]


class Llama3ChatFormat(_ChatFormat):
    """Llama 3 Instruct's header / end-of-turn format (Meta's ``ChatFormat``)."""

    stop_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")

    def _header(self, role: str) -> Pieces:
        return [(True, "<|start_header_id|>"), (False, role), (True, "<|end_header_id|>"),
                (False, "\n\n")]

    def _pieces(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool) -> Pieces:
        pieces: Pieces = [(True, "<|begin_of_text|>")]
        for message in messages:
            pieces += self._header(message["role"])
            pieces += [(False, message["content"].strip()), (True, "<|eot_id|>")]
        if add_generation_prompt:
            pieces += self._header("assistant")
        return pieces


class Qwen3ChatFormat(_ChatFormat):
    """Qwen3's ChatML with its thinking switch (``enable_thinking``, on by default).

    With thinking on, the generation prompt is left open and the model decides whether to think
    (``<think>...</think>`` first); with it off, an empty thought is written for it, so it
    answers at once. Tools are not supported.
    """

    stop_tokens = ("<|im_end|>", "<|endoftext|>")

    def __init__(self, enable_thinking: bool = True) -> None:
        self.enable_thinking = check_bool("enable_thinking", enable_thinking)

    @staticmethod
    def _split_reasoning(message: Mapping[str, Any]) -> tuple[str, str]:
        """(reasoning, answer) of an assistant message: its ``reasoning_content`` if given, else
        what its content holds between ``<think>`` and ``</think>``."""
        content = message["content"]
        if message.get("reasoning_content") is not None:
            return message["reasoning_content"], content
        if "</think>" not in content:
            return "", content
        thought, _, _ = content.partition("</think>")
        reasoning = thought.rstrip("\n").split("<think>")[-1].lstrip("\n")
        return reasoning, content.split("</think>")[-1].lstrip("\n")

    def _turn(self, role: str, body: str) -> Pieces:
        return [(True, "<|im_start|>"), (False, f"{role}\n{body}"), (True, "<|im_end|>"),
                (False, "\n")]

    def _pieces(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool) -> Pieces:
        # The last real query: a user turn that is not a tool's answer wrapped as one.
        users = [i for i, m in enumerate(messages) if m["role"] == "user" and not (
            m["content"].startswith("<tool_response>")
            and m["content"].endswith("</tool_response>"))]
        last_query = users[-1] if users else len(messages) - 1
        pieces: Pieces = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                pieces += self._turn(message["role"], message["content"])
                continue
            reasoning, answer = self._split_reasoning(message)
            last = index == len(messages) - 1
            if index > last_query and (last or reasoning):
                body = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{answer.lstrip(chr(10))}"
            else:
                body = answer
            pieces += self._turn("assistant", body)
        if add_generation_prompt:
            pieces += [(True, "<|im_start|>"), (False, "assistant\n")]
            if not self.enable_thinking:
                pieces.append((False, "<think>\n\n</think>\n\n"))
        return pieces


class Gemma3ChatFormat(_ChatFormat):
    """Gemma 3 instruct's turns: ``user`` and ``model`` alternate, the system text opens the first
    user turn."""

    stop_tokens = ("<end_of_turn>", "<eos>")
    late_system = False  # the system text opens the first user turn; there is no system turn

    def _pieces(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool) -> Pieces:
        prefix = ""
        if messages and messages[0]["role"] == "system":
            prefix, messages = messages[0]["content"] + "\n\n", messages[1:]
        pieces: Pieces = [(True, "<bos>")]
        for index, message in enumerate(messages):
            if (message["role"] == "user") != (index % 2 == 0):
                raise value_error("messages", f"messages must alternate user / assistant after an "
                                              f"optional system message; turn {index} is "
                                              f"{message['role']!r}")
            role = "model" if message["role"] == "assistant" else "user"
            opening = "\n" + (prefix if index == 0 else "")
            pieces += [(True, "<start_of_turn>"), (False, role + opening),
                       (False, message["content"].strip()), (True, "<end_of_turn>"),
                       (False, "\n")]
        if add_generation_prompt:
            pieces += [(True, "<start_of_turn>"), (False, "model\n")]
        return pieces


def chat_format_for(tokenizer: Any, *, enable_thinking: bool = True) -> _ChatFormat:
    """The chat format whose markers the tokenizer has, among the registered families' formats
    (each family names its own: Llama 3's, Qwen3's ChatML, Gemma 3's, ...)."""
    from ..machinery.registry import FAMILIES

    specials = set(getattr(tokenizer, "special_tokens_set", ()))
    formats = dict.fromkeys(f.chat_format for f in FAMILIES.values() if f.chat_format)
    for chat_format in formats:
        made = (chat_format(enable_thinking=enable_thinking)
                if "enable_thinking" in inspect.signature(chat_format).parameters
                else chat_format())
        probe = made._pieces([{"role": "user", "content": "?"}], True)
        if {text for special, text in probe if special} <= specials:
            return made
    raise value_error("tokenizer", "tokenizer has the chat tokens of no registered family's "
                                   "format (" + ", ".join(f.__name__ for f in formats) + ")")
