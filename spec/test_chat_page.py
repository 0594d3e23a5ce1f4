"""The chat page at ``GET /``, in headless Chromium (Debian's, driven over the DevTools protocol
as the inspection report's test does): type a message, see the reply streamed and equal to what
``generate`` answers, stop the next one and see the server abort it."""

from __future__ import annotations

import re
import time

import pytest
import torch
from fastapi.testclient import TestClient

from gpt_components import generation
from gpt_components.serving import (
    CHAT_PAGE_HTML,
    InstructionChatFormat,
    SequentialEngine,
    build_app,
)
from spec.helpers.chromium import Chromium, find_chromium
from spec.helpers.serving import (
    CONTEXT,
    GatedEngine,
    ThreadServer,
    tiny_model,
    tiny_tokenizer,
    until,
)

pytestmark = pytest.mark.serving
CHROMIUM = find_chromium()


def test_the_page_is_served_at_the_root_and_names_no_outside_address():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    app = build_app(SequentialEngine(model, tokenizer=tokenizer), tokenizer,
                    context_length=CONTEXT, model_name="tiny")
    with TestClient(app) as client:
        page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == CHAT_PAGE_HTML
    # Self-contained: no script, style, image or link fetched from anywhere else.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert not re.search(r"@import|url\(", page.text)
    for hook in ('id="prompt"', 'id="send"', 'id="stop"', 'id="log"', 'id="temperature"',
                 'id="top_p"', 'id="top_k"', 'id="max_tokens"', 'id="seed"', 'id="system"'):
        assert hook in page.text


def _greedy_reply(model, tokenizer, messages, max_tokens):
    ids = InstructionChatFormat().encode(tokenizer, messages)
    out = generation.generate(model, torch.tensor([ids]), max_tokens)[0, len(ids):].tolist()
    if tokenizer.eot_token in out:
        out = out[:out.index(tokenizer.eot_token)]
    return tokenizer.decode(out).split("\n\n### Instruction:")[0]


def _click(page: Chromium, element: str) -> None:
    """A real mouse click in the middle of the element with id ``element``."""
    box = page.evaluate(f"(() => {{ const r = document.getElementById('{element}')"
                        ".getBoundingClientRect(); return [r.x + r.width / 2, "
                        "r.y + r.height / 2]; })()")
    page.click(*box)


def _type_and_send(page: Chromium, text: str) -> None:
    page.evaluate("document.getElementById('prompt').focus()")
    page.call("Input.insertText", text=text)  # as the keyboard would
    _click(page, "send")


def _reply(page: Chromium, index: int) -> dict:
    return page.evaluate(f"(() => {{ const m = document.querySelectorAll('.assistant')[{index}];"
                         " return m ? {text: m.textContent, state: m.dataset.state} : null; })()")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to open the chat page in: install "
                    "Debian's chromium package (apt-get install chromium) or set $CHROMIUM")
def test_the_chat_page_streams_a_reply_and_its_stop_button_stops_the_next():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    engine = GatedEngine(SequentialEngine(model, tokenizer=tokenizer), delay=0.05)
    app = build_app(engine, tokenizer, context_length=CONTEXT, model_name="tiny")
    with ThreadServer(app) as url, Chromium(CHROMIUM) as page:
        page.call("Page.navigate", url=f"{url}/")
        page.wait_for("Page.loadEventFired")
        until(lambda: page.evaluate("document.getElementById('model').textContent") == "tiny")
        page.evaluate("document.getElementById('temperature').value = '0';"
                      "document.getElementById('max_tokens').value = '12'")
        _type_and_send(page, "Name a colour.")
        seen = set()  # the reply's text at each look: more than one look means it streamed
        deadline = time.monotonic() + 60
        while (reply := _reply(page, 0)) is None or reply["state"] == "streaming":
            if reply and reply["text"]:
                seen.add(reply["text"])
            assert time.monotonic() < deadline, "the reply never finished"
            time.sleep(0.01)
        assert reply["state"] == "done"
        expected = _greedy_reply(model, tokenizer, [{"role": "user", "content": "Name a colour."}],
                                 12)
        assert reply["text"] == expected
        assert len(seen) >= 2 and all(expected.startswith(t) for t in seen)

        # The next reply may run to the end of the context: stop it once it has begun.
        page.evaluate("document.getElementById('max_tokens').value = ''")
        _type_and_send(page, "Another one?")
        until(lambda: (r := _reply(page, 1)) is not None and r["text"] != "", timeout=60)
        assert _reply(page, 1)["state"] == "streaming"
        assert page.evaluate("document.getElementById('stop').disabled") is False
        _click(page, "stop")
        until(lambda: _reply(page, 1)["state"] == "stopped")
        until(lambda: app.state.api.loop.held == 0 and not engine.has_unfinished())
        assert len(engine.aborted) == 1  # the server aborted it: the engine holds nothing
        assert page.evaluate("document.getElementById('send').disabled") is False
        # The first exchange left the conversation (the context holds one): the server's 400
        # that said so is the only error the browser saw.
        assert page.evaluate("document.querySelectorAll('.message.left').length") == 2
        assert [e for e in page.errors() if "status of 400" not in e] == []
        assert all(u.startswith(url) for u in page.requested_urls())
