"""The OpenAI-compatible server: what a user's program sees through the official ``openai`` client
and through raw HTTP, each answer compared with ``generation.generate`` on the same prompt.

Fast properties talk to the application in the test's own process (Starlette's TestClient, or
uvicorn in a thread on a free port of 127.0.0.1); the ``gpt-components serve`` process itself
(signals, --api-key, the warning past the loopback) is exercised in the slow tier.
"""

from __future__ import annotations

import json
import signal
import threading

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpt_components import generation
from gpt_components.cli import main
from gpt_components.machinery.checks import value_error
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.serving import (
    ENGINES,
    InstructionChatFormat,
    SequentialEngine,
    build_app,
    make_engine,
    serve_extra_installed,
)
from gpt_components.serving import server as serving_server
from spec.helpers.serving import (
    CONTEXT,
    ChildServer,
    GatedEngine,
    ThreadServer,
    tiny_model,
    tiny_tokenizer,
    until,
    write_run,
)

pytestmark = pytest.mark.serving

WORDS = ["I", " had", " always", " thought", " Jack", " Gisburn", " rather", " a", " cheap",
         " genius", " picture", "\n", " é", "!"]
prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map("".join)
seeds = st.integers(0, 2**31 - 1)


def _served(engine: str):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    app = build_app(make_engine(engine, model, tokenizer), tokenizer, context_length=CONTEXT,
                    model_name="tiny")
    with TestClient(app) as client:
        yield model, tokenizer, client


@pytest.fixture(scope="module")
def served():
    """The tiny model, its tokenizer, and a TestClient of an application serving them with the
    sequential engine."""
    yield from _served("sequential")


@pytest.fixture(scope="module", params=ENGINES)
def served_by(request):
    """The same, once with each engine: every answer must be the one generate gives."""
    yield from _served(request.param)


def reference(model, tokenizer, ids, max_tokens, temperature=0.0, top_k=None, seed=None,
              end_ids=()):
    """What ``generate`` continues ``ids`` with, cut at the first end id: (text, tokens made)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = generation.generate(model, torch.tensor([ids]), max_tokens, temperature=temperature,
                              top_k=top_k, generator=generator)[0, len(ids):].tolist()
    ends = {tokenizer.eot_token, *end_ids}
    cut = next((i for i, t in enumerate(out) if t in ends), None)
    made = len(out) if cut is None else cut + 1
    return tokenizer.decode(out[:cut]), made, "length" if cut is None else "stop"


def chat_ids(tokenizer, messages):
    return InstructionChatFormat().encode(tokenizer, messages)


@settings(deadline=None, max_examples=8)
@given(prompt=prompts, max_tokens=st.integers(1, 12))
@example(prompt="I thought a picture!", max_tokens=4)  # the tiny model's end of text, 4th
def test_a_greedy_completion_is_what_generate_continues(served_by, prompt, max_tokens):
    model, tokenizer, client = served_by
    reply = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt,
                                                 "max_tokens": max_tokens, "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    ids = tokenizer.encode(prompt, allowed_special={"<|endoftext|>"})
    text, made, reason = reference(model, tokenizer, ids, max_tokens)
    assert body["choices"][0]["text"] == text
    assert body["choices"][0]["finish_reason"] == reason
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": made,
                             "total_tokens": len(ids) + made}


@settings(deadline=None, max_examples=8)
@given(prompt=prompts, seed=seeds, temperature=st.floats(0.5, 2.0),
       top_k=st.none() | st.integers(1, 50))
def test_a_seeded_sample_repeats_and_is_what_generate_samples_with_that_seed(
        served_by, prompt, seed, temperature, top_k):
    model, tokenizer, client = served_by
    request = {"prompt": prompt, "max_tokens": 6, "temperature": temperature, "seed": seed,
               "top_k": top_k}
    first = client.post("/v1/completions", json=request).json()
    again = client.post("/v1/completions", json=request).json()
    ids = tokenizer.encode(prompt, allowed_special={"<|endoftext|>"})
    text, *_ = reference(model, tokenizer, ids, 6, temperature, top_k, seed)
    assert first["choices"][0]["text"] == again["choices"][0]["text"] == text


def _events(response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@settings(deadline=None, max_examples=6)
@given(message=prompts, seed=seeds, n=st.integers(1, 3))
def test_a_streamed_chat_joins_to_the_unstreamed_answer_and_ends_with_done(served_by, message,
                                                                          seed, n):
    model, tokenizer, client = served_by
    request = {"messages": [{"role": "user", "content": message}], "max_tokens": 8, "seed": seed,
               "n": n, "temperature": 1.0}
    whole = client.post("/v1/chat/completions", json=request).json()
    streamed = client.post("/v1/chat/completions",
                           json={**request, "stream": True,
                                 "stream_options": {"include_usage": True}})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed)
    for index in range(n):
        parts = [c for e in events for c in e["choices"] if c["index"] == index]
        assert parts[0]["delta"]["role"] == "assistant"
        text = "".join(c["delta"].get("content", "") for c in parts)
        assert text == whole["choices"][index]["message"]["content"]
        assert parts[-1]["finish_reason"] == whole["choices"][index]["finish_reason"]
    assert events[-1]["usage"] == whole["usage"]
    # Choice i samples with seed + i: the answer a request of n = 1 with that seed gets.
    ids = chat_ids(tokenizer, request["messages"])
    for index in range(n):
        text, *_ = reference(model, tokenizer, ids, 8, 1.0, seed=seed + index)
        assert whole["choices"][index]["message"]["content"] == text


@settings(deadline=None, max_examples=8)
@given(prompt=prompts, data=st.data())
def test_a_stop_string_cuts_the_answer_before_it(served_by, prompt, data):
    model, tokenizer, client = served_by
    base = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
    full = client.post("/v1/completions", json=base).json()["choices"][0]["text"]
    if not full:
        return
    start = data.draw(st.integers(0, len(full) - 1))
    stop = full[start:data.draw(st.integers(start + 1, min(len(full), start + 4)))]
    cut = client.post("/v1/completions", json={**base, "stop": [stop, "never seen ~~"]}).json()
    assert cut["choices"][0]["text"] == full[:full.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_the_chat_of_a_tokenizer_without_chat_tokens_is_chapter_7s_instruction_prompt(served):
    model, tokenizer, client = served
    reply = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5,
        "temperature": 0}).json()
    book = ("Below is an instruction that describes a task. Write a response that "
            "appropriately completes the request.\n\n### Instruction:\nName a colour."
            "\n\n### Response:\n")
    ids = tokenizer.encode(book)
    text, *_ = reference(model, tokenizer, ids, 5)
    assert reply["choices"][0]["message"] == {"role": "assistant",
                                              "content": text.split("\n\n### Instruction:")[0]}
    assert reply["usage"]["prompt_tokens"] == len(ids)


BAD = [
    ("malformed JSON", b'{"prompt": "hi"', None, 400),
    ("not an object", b'["hi"]', None, 400),
    ("no prompt", {"max_tokens": 2}, "prompt", 400),
    ("a prompt of the wrong type", {"prompt": 3}, "prompt", 400),
    ("an empty prompt", {"prompt": ""}, "prompt", 400),
    ("an id outside the vocabulary", {"prompt": [1, 10**6]}, "prompt", 400),
    ("max_tokens 0", {"prompt": "hi", "max_tokens": 0}, "max_tokens", 400),
    ("max_tokens of the wrong type", {"prompt": "hi", "max_tokens": "many"}, "max_tokens", 400),
    ("max_tokens past the context", {"prompt": "hi", "max_tokens": CONTEXT}, "max_tokens", 400),
    ("a prompt longer than the context", {"prompt": [5] * (CONTEXT + 1)}, "prompt", 400),
    ("a negative temperature", {"prompt": "hi", "temperature": -1}, "temperature", 400),
    ("a NaN top_p", b'{"prompt": "hi", "top_p": NaN}', "top_p", 400),
    ("top_k 0", {"prompt": "hi", "top_k": 0}, "top_k", 400),
    ("top_k past the vocabulary", {"prompt": "hi", "top_k": 10**6}, "top_k", 400),
    ("a negative seed", {"prompt": "hi", "seed": -1}, "seed", 400),
    ("a model name of the wrong type", {"prompt": "hi", "model": 5}, "model", 400),
    ("a stop of the wrong type", {"prompt": "hi", "stop": 7}, "stop", 400),
    ("n above the limit", {"prompt": "hi", "n": 9}, "n", 400),
    ("stream not a bool", {"prompt": "hi", "stream": "yes"}, "stream", 400),
    ("an unknown model", {"prompt": "hi", "model": "gpt-9"}, "model", 404),
    ("an oversized body", {"prompt": "x" * 2_000_000}, None, 413),
    ("no messages", {"model": "tiny"}, "messages", 400),
    ("a message with no role", {"messages": [{"content": "hi"}]}, "messages", 400),
    ("content of the wrong type", {"messages": [{"role": "user", "content": 5}]}, "messages", 400),
]


@pytest.mark.parametrize("what, body, param, status", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_an_openai_error_object_and_the_server_keeps_serving(
        served, what, body, param, status):
    _, _, client = served
    path = "/v1/chat/completions" if what in ("no messages", "a message with no role",
                                              "content of the wrong type") else "/v1/completions"
    sent = (client.post(path, content=body, headers={"content-type": "application/json"})
            if isinstance(body, bytes) else client.post(path, json=body))
    assert sent.status_code == status
    error = sent.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    fine = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert fine.status_code == 200


class FaultyEngine(SequentialEngine):
    """Refuses prompts that start with id 0 (as an engine with its own limits might) and fails
    its next step once ``fail`` is set."""

    fail = False

    def add_request(self, request_id, prompt_token_ids, params):
        if prompt_token_ids[0] == 0:
            raise value_error("prompt_token_ids", "this engine refuses prompts opening with 0")
        super().add_request(request_id, prompt_token_ids, params)

    def step(self):
        if self.fail:
            self.fail = False
            raise RuntimeError("a step that broke")
        return super().step()


def test_a_request_the_engine_refuses_is_a_400_and_a_failed_step_a_500_and_serving_goes_on(
        served):
    model, tokenizer, _ = served
    engine = FaultyEngine(model, tokenizer=tokenizer)
    app = build_app(engine, tokenizer, context_length=CONTEXT, model_name="tiny")
    with TestClient(app) as client:
        refused = client.post("/v1/completions", json={"prompt": [0, 1], "max_tokens": 2})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "prompt_token_ids"
        engine.fail = True
        failed = client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        assert "a step that broke" in failed.json()["error"]["message"]
        until(lambda: not engine.has_unfinished() and app.state.api.loop.held == 0)
        fine = client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
        assert fine.status_code == 200


def test_an_unknown_route_is_a_404_error_object(served):
    _, _, client = served
    reply = client.get("/v1/nothing")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"


def test_with_an_api_key_a_request_without_it_is_a_401(served):
    model, tokenizer, _ = served
    app = build_app(SequentialEngine(model, tokenizer=tokenizer), tokenizer,
                    context_length=CONTEXT, model_name="tiny", api_key="sesame")
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            reply = client.get("/v1/models", headers=headers)
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Bearer sesame"}).json()[
            "data"][0]["id"] == "tiny"
        assert client.get("/").status_code == 200  # the page asks for the key itself


def test_one_request_past_max_requests_is_a_429_and_the_held_one_still_finishes(served):
    model, tokenizer, _ = served
    engine = GatedEngine(SequentialEngine(model, tokenizer=tokenizer))
    engine.gate.clear()
    app = build_app(engine, tokenizer, context_length=CONTEXT, model_name="tiny",
                    max_requests=1)
    with ThreadServer(app) as url:
        replies = []
        first = threading.Thread(target=lambda: replies.append(httpx.post(
            f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)))
        first.start()
        try:
            until(lambda: app.state.api.loop.held == 1)
            refused = httpx.post(f"{url}/v1/completions", json={"prompt": "hi",
                                                                "max_tokens": 2})
        finally:
            engine.gate.set()  # whatever happened, the held request may finish
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        first.join(timeout=60)
        assert replies[0].status_code == 200
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "hi"}).status_code == 200


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_client_that_disconnects_mid_stream_aborts_its_request(served, engine_name):
    model, tokenizer, _ = served
    engine = GatedEngine(make_engine(engine_name, model, tokenizer), delay=0.02)
    app = build_app(engine, tokenizer, context_length=CONTEXT, model_name="tiny")
    with ThreadServer(app) as url, httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/completions",
                           json={"prompt": "hi", "max_tokens": 200, "stream": True}) as reply:
            next(reply.iter_lines())  # the first token has come: the request is running
            assert engine.has_unfinished()
        until(lambda: not engine.has_unfinished() and app.state.api.loop.held == 0)
        assert len(engine.aborted) == 1  # freed by an abort, not by running to its end
        assert client.post(f"{url}/v1/completions", json={"prompt": "hi"}).status_code == 200


def test_a_client_that_leaves_before_a_whole_answer_aborts_its_request(served):
    model, tokenizer, _ = served
    engine = GatedEngine(SequentialEngine(model, tokenizer=tokenizer), delay=0.02)
    app = build_app(engine, tokenizer, context_length=CONTEXT, model_name="tiny")
    with ThreadServer(app) as url:
        with pytest.raises(httpx.ReadTimeout):  # (greedy: a sampled end of text could end
            # the answer within the half second, as it did once in ten runs)
            httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 200,
                                                      "temperature": 0}, timeout=0.5)
        until(lambda: not engine.has_unfinished() and app.state.api.loop.held == 0)
        assert len(engine.aborted) == 1


def test_the_openai_client_completes_chats_streams_and_repeats_seeds(served):
    model, tokenizer, _ = served
    app = build_app(SequentialEngine(model, tokenizer=tokenizer), tokenizer,
                    context_length=CONTEXT, model_name="tiny")
    with ThreadServer(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert client.models.retrieve("tiny").id == "tiny"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-9")
        done = client.completions.create(model="tiny", prompt="I had always", max_tokens=6,
                                         temperature=0)
        ids = tokenizer.encode("I had always")
        assert done.choices[0].text == reference(model, tokenizer, ids, 6)[0]
        assert done.usage.prompt_tokens == len(ids)
        text = done.choices[0].text
        assert len(text) > 2  # (the tiny model's fixed weights write this much)
        stop = text[1:3]  # a stop string: the answer ends right before it
        cut = client.completions.create(model="tiny", prompt="I had always", max_tokens=6,
                                        temperature=0, stop=[stop])
        assert cut.choices[0].text == text[:text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
        messages = [{"role": "user", "content": "Name a colour."}]
        asked = dict(model="tiny", messages=messages, max_tokens=6, temperature=0.9, seed=11)
        answer = client.chat.completions.create(**asked)
        again = client.chat.completions.create(**asked)
        assert answer.choices[0].message.content == again.choices[0].message.content
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           client.chat.completions.create(**asked, stream=True) if chunk.choices)
        assert streamed == answer.choices[0].message.content
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="tiny", prompt="hi", max_tokens=0)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="gpt-9", prompt="hi")


@pytest.mark.parametrize("engine_name", ENGINES)
def test_concurrent_requests_each_get_the_answer_they_get_alone(served, engine_name):
    model, tokenizer, _ = served
    app = build_app(make_engine(engine_name, model, tokenizer), tokenizer,
                    context_length=CONTEXT, model_name="tiny")
    asks = [dict(prompt=p, max_tokens=5, temperature=1.0, seed=s)
            for p, s in [("I had", 1), (" Jack", 2), ("a cheap", 3), ("genius", 4), ("!", 5)]]
    with ThreadServer(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answers: dict[int, str] = {}

        def ask(index: int) -> None:
            answers[index] = client.completions.create(model="tiny", **asks[index]).choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    for index, ask in enumerate(asks):
        ids = tokenizer.encode(ask["prompt"])
        assert answers[index] == reference(model, tokenizer, ids, 5, 1.0, seed=ask["seed"])[0]


def test_serve_without_the_serve_extra_says_which_extra_to_install(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setattr(serving_server, "serve_extra_installed", lambda: False)
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gpt_components[serve]" in err
    assert serve_extra_installed()  # this environment has it (the dev extra includes it)


def test_serve_on_a_port_in_use_is_one_line_naming_the_port(tmp_path, capsys):
    import socket

    run = write_run(tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port), "--engine", "sequential"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gpt-components: error: --port")


def test_serve_reads_the_api_key_from_the_environment(tmp_path, monkeypatch, capsys):
    seen = {}

    def record(model, tokenizer, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(serving_server, "serve_model", record)
    monkeypatch.setenv(serving_server.API_KEY_VARIABLE, "from-env")
    assert main(["serve", str(write_run(tmp_path / "run")), "--host", "0.0.0.0"]) == 0
    assert seen["api_key"] == "from-env" and seen["host"] == "0.0.0.0"
    assert "warning" not in capsys.readouterr().err  # a key is set: no warning


@pytest.mark.slow
@pytest.mark.parametrize("sig, flags", [(signal.SIGINT, ("--api-key", "sesame")),
                                        (signal.SIGTERM, ("--host", "0.0.0.0"))],
                         ids=["SIGINT with a key", "SIGTERM past the loopback"])
def test_gpt_components_serve_answers_and_a_signal_stops_it_in_one_line(tmp_path, sig, flags):
    run = write_run(tmp_path / "run")
    child = ChildServer(run, *flags)
    with child as url:
        if "--api-key" in flags:
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0)
        answer = client.completions.create(model="run", prompt="I had", max_tokens=4,
                                           temperature=0)
        model, tokenizer = tiny_model(), tiny_tokenizer()
        ids = tokenizer.encode("I had")
        assert answer.choices[0].text == reference(model, tokenizer, ids, 4)[0]
        status, out, err = child.stop(sig)
    assert status == 0 and "Traceback" not in err
    lines = err.strip().split("\n")
    assert lines[-1] == f"gpt-components: server stopped by {sig.name}"
    if "--host" in flags:  # past the loopback without a key: said once, at the start
        assert len(lines) == 2 and "--host 0.0.0.0" in lines[0] and "api-key" in lines[0]
    else:
        assert len(lines) == 1


@pytest.mark.parametrize("argv, flag", [
    (["serve", "{run}", "--port", "-1"], "--port"),
    (["serve", "{run}", "--port", "70000"], "--port"),
    (["serve", "{run}", "--max-requests", "0"], "--max-requests"),
    (["serve", "{run}", "--max-n", "0"], "--max-n"),
    (["serve", "{run}", "--host", ""], "--host"),
    (["serve", "/no/such/run"], "source"),
    (["chat", "{run}", "--temperature", "-1"], "--temperature"),
    (["chat", "{run}", "--top-p", "2"], "--top-p"),
    (["chat", "{run}", "--top-k", "0"], "--top-k"),
    (["chat", "{run}", "--seed", "-1"], "--seed"),
    (["chat", "{run}", "--max-tokens", "0"], "--max-tokens"),
])
def test_a_bad_serve_or_chat_flag_is_one_line_naming_it(argv, flag, tmp_path, capsys):
    # The run does not exist: every flag is checked before the model is loaded.
    assert main([a.replace("{run}", str(tmp_path / "run")) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpt-components: error: {flag}") and err.count("\n") == 1, err


def test_a_chat_is_in_the_familys_format_where_the_tokenizer_has_one(tmp_path):
    """Qwen3's ChatML, rendered by transformers' own template (the reference), answered with
    generate's greedy tokens up to the format's end of turn."""
    import transformers

    from gpt_components.modern.tokenizers import load_tokenizer
    from spec.test_modern_chat import QWEN3_TEMPLATE, _byte_level_tokenizer, _model_dir
    from spec.test_modern_tokenizers import QWEN_ADDED, QWEN_SPECIALS

    path = _model_dir(tmp_path / "qwen3", _byte_level_tokenizer(QWEN_SPECIALS, QWEN_ADDED),
                      {"eos_token": "<|im_end|>", "chat_template": QWEN3_TEMPLATE})
    tokenizer, hf = load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=tokenizer.n_vocab,
                                             context_length=128, drop_rate=0.0)).eval()
    app = build_app(SequentialEngine(model, tokenizer=tokenizer), tokenizer, context_length=128,
                    model_name="qwen")
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."}]
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={"messages": messages,
                                                          "max_tokens": 12, "temperature": 0})
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if not isinstance(ids, list) else ids)
    out = generation.generate(model, torch.tensor([ids]), 12)[0, len(ids):].tolist()
    ends = [i for i, t in enumerate(out) if t in hf.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"])]
    expected = hf.decode(out[:ends[0]] if ends else out)
    assert reply.json()["usage"]["prompt_tokens"] == len(ids)
    assert reply.json()["choices"][0]["message"]["content"] == expected
