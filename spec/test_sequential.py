"""The textbook engine: any drawn set of requests, added at any steps and some aborted, gives
every request exactly the tokens ``generation.generate`` gives it alone (token for token when
greedy, with its own seed when sampling), cut at its first stop id."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import generation
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.serving import SamplingParams, SequentialEngine

pytestmark = pytest.mark.serving

VOCAB, CONTEXT = 40, 32


def _model() -> GPTModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=VOCAB, context_length=CONTEXT,
                                            drop_rate=0.0)).eval()


MODEL = _model()

requests = st.lists(st.fixed_dictionaries({
    "prompt": st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10),
    "max_tokens": st.integers(1, 6),
    "temperature": st.sampled_from([0.0, 0.7, 1.5]),
    "top_k": st.none() | st.integers(1, VOCAB),
    "seed": st.integers(0, 2**32),
    "stop_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=2),
    "arrives": st.integers(0, 6),  # the step before which it is added
    "aborted_at": st.none() | st.integers(0, 12),  # the step before which it is aborted
}), min_size=1, max_size=3)


def _alone(request: dict) -> list[int]:
    """What generate gives the request on its own, up to (not including) its first stop id."""
    generator = torch.Generator().manual_seed(request["seed"])
    out = generation.generate(MODEL, torch.tensor([request["prompt"]]), request["max_tokens"],
                              temperature=request["temperature"], top_k=request["top_k"],
                              generator=generator)[0, len(request["prompt"]):].tolist()
    stops = [i for i, t in enumerate(out) if t in request["stop_token_ids"]]
    return out[:stops[0]] if stops else out


@settings(deadline=None, max_examples=12)
@given(drawn=requests)
def test_every_request_gets_what_generate_gives_it_alone(drawn):
    engine = SequentialEngine(MODEL)
    finished: dict[str, tuple[list[int], str]] = {}
    streamed: dict[str, list[int]] = {}
    step = 0
    while len(finished) < len(drawn):
        for index, request in enumerate(drawn):
            name = f"r{index}"
            if request["arrives"] == step:
                engine.add_request(name, request["prompt"], SamplingParams(
                    temperature=request["temperature"], top_k=request["top_k"],
                    max_tokens=request["max_tokens"], seed=request["seed"],
                    stop_token_ids=tuple(request["stop_token_ids"])))
            if request["aborted_at"] == step and request["arrives"] <= step:
                engine.abort(name)
        for output in engine.step():
            assert output.request_id not in finished
            streamed.setdefault(output.request_id, []).extend(output.new_token_ids)
            assert streamed[output.request_id] == output.token_ids
            if output.finished:
                finished[output.request_id] = (output.token_ids, output.finish_reason)
        step += 1
        assert step < 200
    assert not engine.has_unfinished()
    for index, request in enumerate(drawn):
        tokens, reason = finished[f"r{index}"]
        alone = _alone(request)
        if reason == "abort":
            assert alone[:len(tokens)] == tokens  # what it had made by then, nothing more
        else:
            assert tokens == alone
            assert reason == ("length" if len(alone) == request["max_tokens"] else "stop")


def test_a_stop_string_ends_the_request_once_its_text_holds_it():
    class Letters:  # id i decodes to the i-th letter
        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    engine = SequentialEngine(MODEL, tokenizer=Letters())
    prompt = [1, 2, 3]
    alone = generation.generate(MODEL, torch.tensor([prompt]), 8)[0, 3:].tolist()
    stop = Letters().decode(alone[2:4])
    engine.add_request("a", prompt, SamplingParams(temperature=0, max_tokens=8, stop=(stop,)))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    text = Letters().decode(outputs[-1].token_ids)
    assert outputs[-1].finish_reason == "stop" and text.endswith(stop)
    assert text.count(stop) == 1 and outputs[-1].token_ids == alone[:len(outputs[-1].token_ids)]


@pytest.mark.parametrize("prompt, params, parameter", [
    ([], SamplingParams(), "prompt_token_ids"),
    ([VOCAB], SamplingParams(), "prompt_token_ids"),
    ([1] * CONTEXT, SamplingParams(max_tokens=1), "max_tokens"),
    ([1], SamplingParams(top_k=VOCAB + 1), "top_k"),
    ([1], {"temperature": 0}, "params"),
])
def test_a_request_no_engine_can_serve_is_refused_naming_the_parameter(prompt, params,
                                                                      parameter):
    with pytest.raises((ValueError, TypeError)) as caught:
        SequentialEngine(MODEL).add_request("a", prompt, params)
    assert caught.value.parameter == parameter
