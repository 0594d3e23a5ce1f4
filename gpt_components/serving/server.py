"""An OpenAI-compatible server: the API everybody's client already speaks, in front of an engine.

``build_app(engine, tokenizer, context_length=..., model_name=...)`` is a FastAPI application
with ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/completions``, ``POST
/v1/chat/completions`` (streamed as server-sent events ending in ``data: [DONE]`` when
``stream`` is true) and the chat page at ``GET /``; ``serve_model(...)`` runs it under uvicorn
until SIGINT or SIGTERM. FastAPI and uvicorn are the ``serve`` extra's, imported only when an
application is built.

How a request travels:

1. The handler reads the body (refusing one past ``max_body_bytes``), checks every field
   through ``machinery.checks`` (a refused field is a 400 whose ``param`` names it), renders
   the prompt (chat: ``chat_prompt_for(tokenizer)``, the family's format or chapter 7's) and
   checks it fits the context with its ``max_tokens``.
2. ``EngineLoop`` (``engine_loop.py``) owns the engine: one thread adds requests, calls
   ``engine.step()`` while any is unfinished and hands each ``RequestOutput`` to its request's
   asyncio queue. Nothing else touches the engine, so an engine need not be thread-safe.
3. The handler turns outputs into text: stop strings are cut here (whatever the engine does
   with them), text that could still become a stop string or a half-written character is held
   back until it cannot.
4. A client that goes away (mid-stream, or before a whole answer is written) cancels its
   answers, which aborts its requests: the engine frees what it held for them.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
field, 401 without the ``api_key`` when one is set, 404 for an unknown model or route, 413 for
a body too large, 429 when ``max_requests`` are already held, 500 if the engine fails.

>>> from fastapi.testclient import TestClient
>>> from gpt_components.bpe import BPETokenizer
>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.serving import SequentialEngine
>>> tokenizer = BPETokenizer.train("the cat sat on the mat", vocab_size=262)
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=tokenizer.n_vocab))
>>> app = build_app(SequentialEngine(model, tokenizer=tokenizer), tokenizer,
...                 context_length=64, model_name="tiny")
>>> with TestClient(app) as client:
...     reply = client.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 3,
...                                                   "temperature": 0})
>>> reply.json()["usage"]
{'prompt_tokens': 4, 'completion_tokens': 3, 'total_tokens': 7}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import importlib.util
import ipaddress
import json
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..machinery.checks import (
    ArgumentError,
    check_bool,
    check_float,
    check_int,
    check_str,
    value_error,
)
from .answer_text import AnswerText
from .chat_page import CHAT_PAGE_HTML
from .chat_prompts import chat_prompt_for
from .engine_loop import DEFAULT_ENGINE, EngineLoop, make_engine
from .requests import SamplingParams

__all__ = ["build_app", "serve_model", "SERVE_EXTRA_HINT", "API_KEY_VARIABLE",
           "serve_extra_installed", "is_loopback"]

SERVE_EXTRA_HINT = ("serving needs the 'serve' extra (FastAPI and uvicorn): "
                    "pip install 'gpt_components[serve]'")

API_KEY_VARIABLE = "GPT_COMPONENTS_API_KEY"  # the key, when --api-key is not given


def serve_extra_installed() -> bool:
    """Whether FastAPI and uvicorn (the ``serve`` extra) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("fastapi", "uvicorn"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


class _HTTPError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (status, message, param,
                                                                       code, kind)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class _Choice(AnswerText):
    """One of a request's ``n`` answers: its index and its request id in the engine."""

    index: int = 0
    request_id: str = ""


@dataclass
class _Request:
    """A request's parsed fields, ready for the engine."""

    prompt: list[int]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]


class _API:
    """What the handlers share: the served model's facts and the engine loop."""

    def __init__(self, engine: Any, tokenizer: Any, *, context_length: int, model_name: str,
                 api_key: str | None, max_requests: int, max_n: int, max_body_bytes: int,
                 chat_format: Any) -> None:
        self.tokenizer = tokenizer
        self.context_length = check_int("context_length", context_length, low=2)
        self.model_name = check_str("model_name", model_name)
        self.api_key = check_str("api_key", api_key, optional=True)
        self.max_n = check_int("max_n", max_n, low=1)
        self.max_body_bytes = check_int("max_body_bytes", max_body_bytes, low=1)
        self.chat_format = chat_prompt_for(tokenizer) if chat_format is None else chat_format
        eot = getattr(tokenizer, "eot_token", None)
        self.end_ids = frozenset([] if eot is None else [eot])
        self.loop = EngineLoop(engine, max_requests)
        self.created = int(time.time())

    def authorize(self, headers: Mapping[str, str]) -> None:
        if self.api_key is None:
            return
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise _HTTPError(401, "Incorrect or missing API key: send it as 'Authorization: "
                                  "Bearer KEY'", code="invalid_api_key")

    async def body(self, request: Any) -> dict[str, Any]:
        """The JSON object of the request body, read no further than ``max_body_bytes``."""
        too_large = _HTTPError(413, f"The request body is larger than {self.max_body_bytes} "
                                    "bytes", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body_bytes:
                raise too_large
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _HTTPError(400, f"The body is not valid JSON: {error}",
                             code="invalid_json") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, f"The body must be a JSON object, got "
                                  f"{type(body).__name__}", code="invalid_json")
        model = check_str("model", body.get("model"), optional=True)
        if model is not None and model != self.model_name:
            raise _HTTPError(404, f"The model {model!r} does not exist: this server serves "
                                  f"{self.model_name!r}", "model", "model_not_found")
        return body

    def parse(self, body: dict[str, Any], prompt: list[int], default_max_tokens: int,
              extra_stop: tuple[str, ...] = (), stop_ids: tuple[int, ...] = (),
              prompt_param: str = "prompt") -> _Request:
        """The sampling fields of ``body`` (OpenAI's names and defaults; ``top_k`` as vLLM's
        extra field) checked, and the prompt checked against the context."""
        if len(prompt) >= self.context_length:
            raise _HTTPError(400, f"The prompt is {len(prompt)} tokens long, and this model's "
                                  f"context is {self.context_length} tokens: it must leave room "
                                  "for at least one new token", prompt_param,
                             "context_length_exceeded")
        room = self.context_length - len(prompt)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = default_max_tokens if max_tokens is None else max_tokens
        check_int("max_tokens", max_tokens, low=1)
        if max_tokens > room:
            raise _HTTPError(400, f"max_tokens must be <= {room}: this model's context is "
                                  f"{self.context_length} tokens and the prompt takes "
                                  f"{len(prompt)}, got {max_tokens}", "max_tokens",
                             "context_length_exceeded")
        temperature = check_float("temperature", _get(body, "temperature", 1.0), low=0, high=2)
        top_p = check_float("top_p", _get(body, "top_p", 1.0), low=0, high=1, low_open=True)
        # A top_k past the vocabulary would fail inside a step, and every request in it.
        top_k = check_int("top_k", body.get("top_k"), low=1, high=_vocab_size(self.tokenizer),
                          optional=True)
        seed = check_int("seed", body.get("seed"), low=0, high=2**63 - 1, optional=True)
        n = check_int("n", _get(body, "n", 1), low=1, high=self.max_n)
        stream = check_bool("stream", _get(body, "stream", False))
        options = _get(body, "stream_options", {})
        if not isinstance(options, dict):
            raise value_error("stream_options", f"stream_options must be an object, got "
                                                f"{type(options).__name__}")
        include_usage = check_bool("stream_options", options.get("include_usage", False))
        if body.get("logprobs") not in (None, False) or body.get("echo"):
            raise _HTTPError(400, "logprobs and echo are not supported by this server",
                             "logprobs" if body.get("logprobs") else "echo", "unsupported")
        stop = _get(body, "stop", [])
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4:
            raise value_error("stop", f"stop must be a string or a list of at most 4 strings, "
                                      f"got {stop!r}")
        for text in stop:
            check_str("stop", text)
        stop = tuple(stop) + tuple(extra_stop)
        # Stop strings stay here, not in the engine: the API returns all the text before a
        # stop string, while an engine cuts whole tokens and so drops the text a token holds
        # before the string. The handler cuts the text and aborts the request at the first one.
        params = SamplingParams(temperature=temperature, top_k=top_k,
                                top_p=None if top_p == 1 else top_p, max_tokens=max_tokens,
                                stop_token_ids=tuple(sorted(self.end_ids | set(stop_ids))),
                                seed=seed)
        return _Request(prompt, params, n, stream, include_usage, stop)

    def completion_prompt(self, body: dict[str, Any]) -> list[int]:
        """``prompt``: a string or a list of ids (or a list holding one of those)."""
        if "prompt" not in body:
            raise _HTTPError(400, "The field 'prompt' is required", "prompt", "missing_field")
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            specials = set(getattr(self.tokenizer, "special_tokens_set", ()))
            ids = self.tokenizer.encode(prompt, allowed_special=specials)
        elif isinstance(prompt, list) and all(type(t) is int for t in prompt):
            ids = prompt
            vocab = _vocab_size(self.tokenizer)
            for token in ids:
                check_int("prompt", token, low=0, high=vocab - 1)
        else:
            raise _HTTPError(400, "prompt must be a string or a list of token ids (one prompt "
                                  "per request)", "prompt", "invalid_type")
        if not ids:
            raise _HTTPError(400, "prompt must hold at least one token, got an empty prompt",
                             "prompt", "invalid_value")
        return ids

    def chat_prompt(self, body: dict[str, Any]) -> list[int]:
        if "messages" not in body:
            raise _HTTPError(400, "The field 'messages' is required", "messages",
                             "missing_field")
        messages = body["messages"]
        if isinstance(messages, list):  # content given as OpenAI's list of text parts
            messages = [_plain_content(m) for m in messages]
        return self.chat_format.encode(self.tokenizer, messages)

    async def answers(self, request: _Request) -> AsyncIterator[tuple[_Choice, str]]:
        """(choice, new text) as the engine writes; each choice's last has a finish reason.
        Leaving early (a client gone) aborts every unfinished choice."""
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        event_loop = asyncio.get_running_loop()

        def deliver(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop closed: nobody listens
                event_loop.call_soon_threadsafe(outputs.put_nowait, item)

        choices = {}
        base = secrets.token_hex(8)
        try:
            for index in range(request.n):
                seed = request.params.seed
                params = dataclasses.replace(request.params,
                                             seed=None if seed is None else seed + index)
                choice = _Choice(request.stop, frozenset(params.stop_token_ids), index=index,
                                 request_id=f"{base}-{index}")
                if not self.loop.submit(choice.request_id, request.prompt, params, deliver):
                    raise _HTTPError(429, f"The server holds {self.loop.max_requests} requests "
                                          "already: try again shortly", code="too_many_requests",
                                     kind="rate_limit_error")
                choices[choice.request_id] = choice
            while any(c.finish_reason is None for c in choices.values()):
                item = await outputs.get()
                if isinstance(item, ArgumentError):
                    raise item  # the engine refused the request: a 400 naming the field
                if isinstance(item, BaseException):
                    raise _HTTPError(500, f"The engine failed: {item}", code="engine_error",
                                     kind="server_error")
                choice = choices[item.request_id]
                if choice.finish_reason is not None:
                    continue
                new = choice.feed(item, self.tokenizer.decode)
                if choice.finish_reason is not None and not item.finished:
                    self.loop.abort(choice.request_id)  # its text reached a stop string
                yield choice, new
        finally:
            for choice in choices.values():
                if choice.finish_reason is None:
                    self.loop.abort(choice.request_id)


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    """``body[name]``, its default when absent or null (as OpenAI's API reads them)."""
    value = body.get(name)
    return default if value is None else value


def _vocab_size(tokenizer: Any) -> int:
    return tokenizer.n_vocab


def _plain_content(message: Any) -> Any:
    """A message whose content is a list of ``{"type": "text", "text"}`` parts, as one str."""
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        parts = message["content"]
        if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
               for p in parts):
            return {**message, "content": "".join(p["text"] for p in parts)}
    return message


async def _collect(answers: AsyncIterator[tuple[_Choice, str]]) -> dict[int, _Choice]:
    """Every choice of a request, once all are finished."""
    choices = {}
    async for choice, _ in answers:
        choices[choice.index] = choice
    return choices


async def _disconnected(request: Any) -> None:
    """Returns once the client of ``request`` has closed its connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)


def _usage(prompt: list[int], choices: list[_Choice]) -> dict[str, int]:
    completion = sum(c.tokens for c in choices)
    return {"prompt_tokens": len(prompt), "completion_tokens": completion,
            "total_tokens": len(prompt) + completion}


def build_app(engine: Any, tokenizer: Any, *, context_length: int, model_name: str,
              api_key: str | None = None, max_requests: int = 64, max_n: int = 8,
              max_body_bytes: int = 1_000_000, chat_format: Any = None) -> Any:
    """The FastAPI application serving ``engine`` (its thread starts with the application).

    ``context_length`` bounds a prompt and its ``max_tokens``; ``model_name`` is the id
    ``/v1/models`` lists and requests may name; ``chat_format`` defaults to
    ``chat_prompt_for(tokenizer)``.
    """
    try:
        from fastapi import FastAPI
        from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise ImportError(SERVE_EXTRA_HINT) from None

    api = _API(engine, tokenizer, context_length=context_length, model_name=model_name,
               api_key=api_key, max_requests=max_requests, max_n=max_n,
               max_body_bytes=max_body_bytes, chat_format=chat_format)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        api.loop.start()
        yield
        api.loop.stop()

    app = FastAPI(title=f"gpt_components: {model_name}", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.api = api

    def error_response(error: _HTTPError) -> Any:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Any, error: HTTPException) -> Any:
        return error_response(_HTTPError(error.status_code, str(error.detail),
                                         code="not_found" if error.status_code == 404 else None))

    def handled(handler: Callable[..., Any]) -> Callable[..., Any]:
        """Run a handler; a refused field or an _HTTPError becomes OpenAI's error object."""
        async def run(request: Any) -> Any:
            try:
                api.authorize(request.headers)
                answer = await handler(request)
                return JSONResponse(answer) if isinstance(answer, dict) else answer
            except _HTTPError as error:
                return error_response(error)
            except ArgumentError as error:
                kind = "invalid_type" if isinstance(error, TypeError) else "invalid_value"
                return error_response(_HTTPError(400, str(error), error.parameter, kind))
        run.__name__ = handler.__name__
        return run

    async def chat_page(_: Any) -> Any:
        return HTMLResponse(CHAT_PAGE_HTML)

    async def no_icon(_: Any) -> Any:
        return Response(status_code=204)  # browsers ask; the page has none

    app.add_route("/", chat_page, methods=["GET"])
    app.add_route("/favicon.ico", no_icon, methods=["GET"])

    card = {"id": model_name, "object": "model", "created": api.created,
            "owned_by": "gpt_components", "max_model_len": api.context_length}

    async def list_models(_: Any) -> Any:
        return {"object": "list", "data": [card]}

    async def one_model(request: Any) -> Any:
        asked = request.path_params["model"]
        if asked != model_name:
            raise _HTTPError(404, f"The model {asked!r} does not exist: this server serves "
                                  f"{model_name!r}", "model", "model_not_found")
        return card

    async def completions(request: Any) -> Any:
        body = await api.body(request)
        prompt = api.completion_prompt(body)
        parsed = api.parse(body, prompt, default_max_tokens=16)
        return await respond(request, parsed, chat=False)

    async def chat_completions(request: Any) -> Any:
        body = await api.body(request)
        prompt = api.chat_prompt(body)
        chat = api.chat_format
        parsed = api.parse(body, prompt,
                           default_max_tokens=max(1, api.context_length - len(prompt)),
                           extra_stop=tuple(getattr(chat, "stop_strings", ())),
                           stop_ids=tuple(chat.stop_ids(api.tokenizer)), prompt_param="messages")
        return await respond(request, parsed, chat=True)

    for path, method, handler in (("/v1/models", "GET", list_models),
                                  ("/v1/models/{model:path}", "GET", one_model),
                                  ("/v1/completions", "POST", completions),
                                  ("/v1/chat/completions", "POST", chat_completions)):
        app.add_route(path, handled(handler), methods=[method])  # plain Starlette endpoints

    async def respond(request: Any, parsed: _Request, chat: bool) -> Any:
        ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        head = {"id": ident, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model_name}
        if parsed.stream:
            return await stream(parsed, chat, head)
        # A client that leaves before a whole answer is written cancels it, as a stream's does.
        collected = asyncio.ensure_future(_collect(api.answers(parsed)))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({collected, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not collected.done():
            collected.cancel()  # its answers' finally aborts the requests
            return Response(status_code=499)  # nobody is there to read it (nginx's code)
        choices = collected.result()
        made = [choices[i] for i in sorted(choices)]
        return {**head, "choices": [
            {"index": c.index, "logprobs": None, "finish_reason": c.finish_reason,
             **({"message": {"role": "assistant", "content": c.text}} if chat
                else {"text": c.text})} for c in made],
            "usage": _usage(parsed.prompt, made)}

    async def stream(parsed: _Request, chat: bool, head: dict[str, Any]) -> Any:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        answers = api.answers(parsed)
        # The first answer is awaited here, so that a refusal (429) is still a status code.
        first = await anext(answers, None)

        def chunk(choice: _Choice, text: str, role: bool = False) -> str:
            part = ({"delta": ({"role": "assistant"} if role else {})
                     | ({"content": text} if text or role else {})} if chat else {"text": text})
            event = {**head, "choices": [{"index": choice.index, "logprobs": None,
                                          "finish_reason": choice.finish_reason, **part}]}
            return f"data: {json.dumps(event)}\n\n"

        async def events() -> AsyncIterator[str]:
            seen: dict[int, _Choice] = {}
            try:
                pending = [] if first is None else [first]
                while True:
                    for choice, text in pending:
                        opening = chat and choice.index not in seen
                        seen[choice.index] = choice
                        if text or opening or choice.finish_reason is not None:
                            yield chunk(choice, text, role=opening)
                    item = await anext(answers, None)
                    if item is None:
                        break
                    pending = [item]
                if parsed.include_usage:
                    made = [seen[i] for i in sorted(seen)]
                    usage = {**head, "choices": [], "usage": _usage(parsed.prompt, made)}
                    yield f"data: {json.dumps(usage)}\n\n"
            except _HTTPError as error:
                yield f"data: {json.dumps(error.body())}\n\n"
            finally:
                await answers.aclose()  # a client gone: its requests are aborted
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


def serve_model(model: nn.Module, tokenizer: Any, *, model_name: str, host: str = "127.0.0.1",
                port: int = 8000, engine: str = DEFAULT_ENGINE, api_key: str | None = None,
                max_requests: int = 64, max_n: int = 8,
                announce: Callable[[str], None] = print) -> str | None:
    """Serve ``model`` until SIGINT or SIGTERM; returns the signal's name (``"SIGINT"``).

    The socket is bound before anything starts, so a port in use is an error naming ``port``;
    ``announce`` is told the address once the server listens (port 0: a free one).
    """
    try:
        import uvicorn
    except ImportError:
        raise ImportError(SERVE_EXTRA_HINT) from None
    check_str("host", host)
    check_int("port", port, low=0, high=65535)
    app = build_app(make_engine(engine, model, tokenizer), tokenizer,
                    context_length=model.cfg.context_length, model_name=model_name,
                    api_key=api_key, max_requests=max_requests, max_n=max_n)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        raise value_error("port", f"port: cannot listen on {host}:{port} "
                                  f"({error.strerror or error})") from None
    bound_port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=3)
    server = _server_class()(config)
    where = f"[{host}]" if ":" in host else host
    server.on_started = lambda: announce(f"serving {model_name} on http://{where}:{bound_port} "
                                         f"(engine: {engine}; OpenAI API under /v1, chat page "
                                         f"at /); Ctrl-C stops")
    with listener:
        server.run(sockets=[listener])
    return server.signal_name


def _server_class() -> type:
    import uvicorn

    class SignalledServer(uvicorn.Server):
        """uvicorn's server, stopped by SIGINT or SIGTERM without re-raising the signal after
        the shutdown (uvicorn does, which would end the process with the signal's status)."""

        on_started: Callable[[], None] = staticmethod(lambda: None)
        signal_name: str | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                self.on_started()

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def stop(sig: int, _: Any) -> None:
                self.force_exit = self.should_exit  # a second Ctrl-C: stop without waiting
                self.should_exit = True
                self.signal_name = signal.Signals(sig).name

            kept = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in kept.items():
                    signal.signal(sig, handler)

    return SignalledServer

