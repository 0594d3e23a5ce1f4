"""Chatting in the terminal, and the prompt a conversation renders to.

Chapter 7's format is checked against the book's own text (the Alpaca template written out
here, not the code's), the answers against ``generation.generate`` on the rendered prompt, and
the trimming of the history against a brute-force search for the most exchanges that fit.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import generation
from gpt_components.cli import main
from gpt_components.modern.chat import Llama3ChatFormat
from gpt_components.serving import (
    InstructionChatFormat,
    RequestOutput,
    SequentialEngine,
    TerminalChat,
    chat_in_terminal,
    chat_prompt_for,
)
from spec.helpers.serving import CONTEXT, tiny_model, tiny_tokenizer, write_run

pytestmark = pytest.mark.serving

BOOK_PREAMBLE = ("Below is an instruction that describes a task. Write a response that "
                 "appropriately completes the request.")
texts = st.text(st.sampled_from("abc xyz\n#!é"), min_size=1, max_size=20)
lines = st.text(st.sampled_from("abc xyz#!é"), min_size=1, max_size=80)  # one message a line


def book_example(instruction: str, output: str | None) -> str:
    """The book's chapter-7 training text (its ``format_input`` and response, written out)."""
    text = f"{BOOK_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    return text if output is None else text + output


@settings(deadline=None, max_examples=30)
@given(turns=st.lists(texts, min_size=1, max_size=7).filter(lambda t: len(t) % 2 == 1),
       system=st.none() | texts)
def test_a_conversation_is_chapter_7s_training_examples_one_after_another(turns, system):
    tokenizer = tiny_tokenizer()
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                for i, t in enumerate(turns)]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    expected_ids = [] if system is None else tokenizer.encode(system + "\n\n")
    for i in range(0, len(turns) - 1, 2):  # each exchange as the book trains on it
        expected_ids += tokenizer.encode(book_example(turns[i], turns[i + 1]))
        expected_ids.append(tokenizer.eot_token)
    expected_ids += tokenizer.encode(book_example(turns[-1], None))
    chat = InstructionChatFormat()
    assert chat.encode(tokenizer, messages) == expected_ids
    assert chat.render(messages) == tokenizer.decode(expected_ids)
    assert chat.stop_ids(tokenizer) == [tokenizer.eot_token]


def test_a_tokenizer_with_a_familys_chat_tokens_chats_in_that_format():
    class LlamaSpecials:  # what chat_format_for reads: the special tokens a tokenizer has
        special_tokens_set = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>", "<|end_of_text|>"}

    assert isinstance(chat_prompt_for(LlamaSpecials()), Llama3ChatFormat)
    assert isinstance(chat_prompt_for(tiny_tokenizer()), InstructionChatFormat)


@pytest.mark.parametrize("messages, fragment", [
    ([], "at least one user message"),
    ([{"role": "assistant", "content": "hi"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with"),
    ([{"role": "robot", "content": "a"}], "role"),
    ([{"role": "user", "content": None}], "content"),
    ("hello", "list"),
])
def test_a_conversation_the_format_cannot_write_is_refused_naming_messages(messages, fragment):
    with pytest.raises((ValueError, TypeError)) as caught:
        InstructionChatFormat().render(messages)
    assert caught.value.parameter == "messages" and fragment in str(caught.value)


def greedy_answer(model, tokenizer, ids, max_tokens):
    """What generate answers ``ids`` with, cut at the end of text or a new instruction."""
    out = generation.generate(model, torch.tensor([ids]), max_tokens)[0, len(ids):].tolist()
    if tokenizer.eot_token in out:
        out = out[:out.index(tokenizer.eot_token)]
    return tokenizer.decode(out).split("\n\n### Instruction:")[0]


def test_piped_lines_are_a_conversation_each_answer_what_generate_gives(capsys):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    out = io.StringIO()
    lines = ["Name a colour.", "", "Another one?", "/exit", "never read"]
    answers = chat_in_terminal(SequentialEngine(model, tokenizer=tokenizer), tokenizer,
                               context_length=CONTEXT, stdin=io.StringIO("\n".join(lines)),
                               out=out, max_tokens=6, temperature=0)
    assert answers == 2
    chat = InstructionChatFormat()
    first = greedy_answer(model, tokenizer, chat.encode(tokenizer, [
        {"role": "user", "content": "Name a colour."}]), 6)
    history = [{"role": "user", "content": "Name a colour."},
               {"role": "assistant", "content": first},
               {"role": "user", "content": "Another one?"}]
    second_ids = chat.encode(tokenizer, history)
    if len(second_ids) + 6 > CONTEXT:  # the first exchange left the history
        second_ids = chat.encode(tokenizer, history[2:])
    second = greedy_answer(model, tokenizer, second_ids, 6)
    assert out.getvalue() == f"{first}\n{second}\n"


class ScriptedEngine:
    """An engine that answers every request with ``answer`` at once, and keeps the prompts."""

    def __init__(self, answer: list[int]) -> None:
        self.answer, self.prompts, self.pending = answer, [], []

    def add_request(self, request_id, prompt, params):
        self.prompts.append((list(prompt), params.max_tokens))
        self.pending.append(request_id)

    def has_unfinished(self):
        return bool(self.pending)

    def step(self):
        done = [RequestOutput(r, self.answer, self.answer, True, "length") for r in self.pending]
        self.pending = []
        return done

    def abort(self, request_id):
        pass


@settings(deadline=None, max_examples=15)
@given(messages=st.lists(lines, min_size=1, max_size=6), answer=st.lists(
    st.integers(0, 255), min_size=1, max_size=12), max_tokens=st.integers(1, 80),
    system=st.none() | texts, context=st.integers(150, 800))
def test_the_history_is_trimmed_from_the_oldest_exchange_to_fit_the_context(
        messages, answer, max_tokens, system, context):
    tokenizer = tiny_tokenizer()
    engine, err = ScriptedEngine(answer), io.StringIO()
    chat_in_terminal(engine, tokenizer, context_length=context, system=system,
                     stdin=io.StringIO("\n".join(messages) + "\n"), out=io.StringIO(), err=err,
                     max_tokens=max_tokens)
    chat = InstructionChatFormat()
    reply = tokenizer.decode(answer)
    head = [] if system is None else [{"role": "system", "content": system}]
    kept: list[dict] = []  # the history the reference keeps: the most recent exchanges that fit
    seen = iter(engine.prompts)
    trimmed = 0
    for message in messages:
        if not message.strip():
            continue
        ask = {"role": "user", "content": message}
        fitting = [k for k in range(0, len(kept) + 1, 2)
                   if len(chat.encode(tokenizer, head + kept[k:] + [ask])) + max_tokens
                   <= context]
        start = fitting[0] if fitting else len(kept)
        ids = chat.encode(tokenizer, head + kept[start:] + [ask])
        if len(ids) >= context:
            continue  # refused in a line; the conversation goes on
        assert next(seen) == (ids, min(max_tokens, context - len(ids)))
        trimmed += start > 0
        kept = kept[start:] + [ask, {"role": "assistant", "content": reply}]
    assert next(seen, None) is None
    assert err.getvalue().count("left the history") == trimmed  # each trim said in a line


def test_gpt_components_chat_reads_stdin_and_answers_each_line(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run")
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\n"))
    assert main(["chat", str(run), "--temperature", "0", "--max-tokens", "5",
                 "--engine", "sequential"]) == 0
    model, tokenizer = tiny_model(), tiny_tokenizer()
    ids = InstructionChatFormat().encode(tokenizer, [{"role": "user",
                                                      "content": "Name a colour."}])
    assert capsys.readouterr().out == greedy_answer(model, tokenizer, ids, 5) + "\n"


def test_gpt_components_chat_refuses_a_bad_flag_before_loading(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nowhere"), "--max-tokens", "0"]) == 2
    assert capsys.readouterr().err.startswith("gpt-components: error: --max-tokens must be")


def test_a_terminal_chat_refuses_a_message_too_long_for_the_context_and_goes_on():
    tokenizer = tiny_tokenizer()
    engine, err, out = ScriptedEngine([5]), io.StringIO(), io.StringIO()
    chat_in_terminal(engine, tokenizer, context_length=CONTEXT, err=err, out=out,
                     stdin=io.StringIO("x " * CONTEXT + "\nshort\n"), max_tokens=4)
    assert len(engine.prompts) == 1 and "shorten it" in err.getvalue()
    chat = TerminalChat(tokenizer, CONTEXT, 4)
    chat.history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(ValueError, match="shorten it") as refused:
        chat.prompt("x " * CONTEXT)
    assert refused.value.parameter == "message" and len(chat.history) == 2  # nothing lost
    assert chat.prompt("short")[1:] == (4, 0)


def test_ctrl_c_during_an_answer_stops_that_answer_and_the_chat_goes_on():
    class Interrupted(ScriptedEngine):
        """Ctrl-C arrives during the first answer's first step."""

        def __init__(self, answer):
            super().__init__(answer)
            self.aborted, self.interrupted = [], False

        def step(self):
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return super().step()

        def abort(self, request_id):
            self.aborted.append(request_id)
            self.pending.remove(request_id)

    tokenizer = tiny_tokenizer()
    engine, out = Interrupted(tokenizer.encode(" blue")), io.StringIO()
    answers = chat_in_terminal(engine, tokenizer, context_length=CONTEXT, out=out,
                               stdin=io.StringIO("first\nsecond\n"), max_tokens=4)
    assert answers == 2 and engine.aborted == ["chat-0"]
    assert out.getvalue() == " (stopped)\n blue\n"
