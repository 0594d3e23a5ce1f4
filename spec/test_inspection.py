"""Spec of ``inspect_prompt``, its report and ``gpt-components inspect``: what is drawn is what
the model computes (recomputed independently, in float64), the page is valid, self-contained
HTML, and it draws in a real browser (headless Chromium)."""

import dataclasses
import io
import json
import re
from html.parser import HTMLParser

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.bpe import BPETokenizer
from gpt_components.cli import main
from gpt_components.inspect.inspection import inspect_prompt, logit_lens
from gpt_components.inspect.inspection_report import render_html, report_data, write_report
from gpt_components.machinery.checkpoint import save_checkpoint
from gpt_components.machinery.resources import load_text, resource_path
from gpt_components.model import GPTConfig
from gpt_components.tokenizers import gpt2_byte_decoder, gpt2_tokenizer
from gpt_components.training import calc_loss_batch
from gpt_components.weights import save_pretrained
from spec.helpers.chromium import Chromium, find_chromium
from spec.strategies import random_gpt_model, seeds, tiny_gpt_configs
from spec.test_trace import reference_attention

pytestmark = pytest.mark.inspect

EXACT = {"rtol": 1e-10, "atol": 1e-10}
TOKENIZER = BPETokenizer.train(load_text("the-verdict.txt")[:1500], vocab_size=280)


@st.composite
def models_and_texts(draw):
    """A tiny float64 GPT over ``TOKENIZER``'s ids and a text that fits its context."""
    cfg = draw(tiny_gpt_configs(vocab_size=TOKENIZER.n_vocab))
    # At most two UTF-8 bytes a character, at least one byte a token: it fits.
    text = draw(st.text(alphabet="abcdehinorst ,.\n\u00e9", min_size=1,
                        max_size=cfg.context_length // 2))
    return random_gpt_model(cfg, draw(seeds)), text


def reference_stream(model, idx):
    """The residual stream entering each block and the last block's output, in float64."""
    with torch.no_grad():
        streams = [model.tok_emb.weight[idx] + model.pos_emb.weight[:idx.shape[1]]]
        for block in model.trf_blocks:
            streams.append(block(streams[-1]))
    return streams


def reference_next_token_probs(model, stream):
    """softmax(out_head(LayerNorm(stream))) by torch.nn.functional: [B, T, V]."""
    norm = model.final_norm
    normed = F.layer_norm(stream, stream.shape[-1:], norm.scale, norm.shift, eps=norm.eps)
    return torch.softmax(F.linear(normed, model.out_head.weight), dim=-1)


def ids_of(text):
    return torch.tensor([TOKENIZER.encode(text)])


@given(case=models_and_texts())
@settings(max_examples=15)
def test_each_attention_map_is_the_layers_own_weights_on_its_residual_stream(case):
    model, text = case
    seen, idx = inspect_prompt(model, TOKENIZER, text), ids_of(text)
    streams = reference_stream(model, idx)
    assert seen.attentions.shape == (model.cfg.n_layers, model.cfg.n_heads, idx.shape[1],
                                     idx.shape[1])
    with torch.no_grad():
        for layer, block in enumerate(model.trf_blocks):
            torch.testing.assert_close(seen.attentions[layer],
                                       reference_attention(block, streams[layer])[0], **EXACT)
            torch.testing.assert_close(seen.attentions[layer],
                                       block.att.attention_weights(block.norm1(streams[layer]))[0],
                                       **EXACT)


@given(case=models_and_texts())
@settings(max_examples=15)
def test_attention_rows_sum_to_one_with_nothing_above_the_diagonal(case):
    model, text = case
    attentions = inspect_prompt(model, TOKENIZER, text).attentions  # (L, H, T, T)
    t = attentions.shape[-1]
    assert torch.all(attentions[..., torch.ones(t, t, dtype=torch.bool).triu(1)] == 0)
    torch.testing.assert_close(attentions.sum(-1), torch.ones(attentions.shape[:-1],
                                                              dtype=torch.float64), **EXACT)


@given(case=models_and_texts(), top_k=st.integers(1, 6))
@settings(max_examples=15)
def test_the_logit_lens_reads_each_stream_and_its_last_layer_is_the_models_prediction(
        case, top_k):
    model, text = case
    seen, idx = inspect_prompt(model, TOKENIZER, text, top_k=top_k), ids_of(text)
    streams = reference_stream(model, idx)
    with torch.no_grad():
        torch.testing.assert_close(logit_lens(model, streams)[-1], model(idx), **EXACT)
    assert torch.equal(seen.lens_top_ids[-1], seen.top_ids)
    torch.testing.assert_close(seen.lens_top_probs[-1], seen.top_probs, **EXACT)
    for layer, stream in enumerate(streams):
        probs = reference_next_token_probs(model, stream)[0]  # (T, V)
        best = probs.sort(dim=-1, descending=True).values[:, :top_k]
        torch.testing.assert_close(seen.lens_top_probs[layer], best, **EXACT)
        torch.testing.assert_close(probs.gather(-1, seen.lens_top_ids[layer]), best, **EXACT)
        torch.testing.assert_close(seen.lens_target_probs[layer],
                                   probs[:-1].gather(-1, idx[0, 1:, None])[:, 0], **EXACT)


@given(case=models_and_texts(), top_k=st.integers(1, 6))
@settings(max_examples=15)
def test_top_k_are_the_most_likely_next_tokens_and_surprisal_is_calc_loss_batchs_loss(
        case, top_k):
    model, text = case
    seen, idx = inspect_prompt(model, TOKENIZER, text, top_k=top_k), ids_of(text)
    with torch.no_grad():
        logits = model(idx)[0]  # (T, V)
        probs = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))
        best = probs.sort(-1, descending=True).values[:, :top_k]
        torch.testing.assert_close(seen.top_probs, best, **EXACT)
        torch.testing.assert_close(probs.gather(-1, seen.top_ids), seen.top_probs, **EXACT)
        assert seen.surprisal.shape == (idx.shape[1] - 1,)
        for j in range(1, idx.shape[1]):  # the loss of the first j predictions, as training sees it
            loss = calc_loss_batch(idx[:, :j], idx[:, 1:j + 1], model, "cpu")
            torch.testing.assert_close(seen.surprisal[:j].mean(), loss, **EXACT)
        torch.testing.assert_close(seen.surprisal, -probs[:-1].gather(-1, idx[0, 1:, None])[:, 0]
                                   .log(), **EXACT)


@given(case=models_and_texts())
@settings(max_examples=15)
def test_the_tokens_spell_the_text_and_stage_sizes_are_the_norms_between_stages(case):
    model, text = case
    seen, idx = inspect_prompt(model, TOKENIZER, text), ids_of(text)
    assert seen.token_ids == idx[0].tolist()
    assert b"".join(seen.pieces) == text.encode("utf-8")
    assert [b for b, _ in seen.spans] == [0, *(e for _, e in seen.spans[:-1])]
    assert all(text.encode()[b:e] == piece for (b, e), piece in zip(seen.spans, seen.pieces,
                                                                    strict=True))
    streams = torch.cat(reference_stream(model, idx))  # (L + 1, T, emb)
    embedded = model.tok_emb.weight[idx[0]] + model.pos_emb.weight[:idx.shape[1]]
    torch.testing.assert_close(seen.embedding_norms, embedded.pow(2).sum(-1).sqrt(), **EXACT)
    torch.testing.assert_close(seen.residual_norms, streams.pow(2).sum(-1).sqrt(), **EXACT)
    torch.testing.assert_close(seen.update_norms, (streams[1:] - streams[:-1]).pow(2).sum(-1)
                               .sqrt(), **EXACT)
    norm = model.final_norm
    final = F.layer_norm(streams[-1], streams.shape[-1:], norm.scale, norm.shift, eps=norm.eps)
    torch.testing.assert_close(seen.final_norms, final.pow(2).sum(-1).sqrt(), **EXACT)


def gpt2_model(**overrides):
    cfg = GPTConfig(**{"vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 2,
                       "n_layers": 2, "drop_rate": 0.0, **overrides})
    return random_gpt_model(cfg, seed=0, dtype=torch.float32)


@pytest.fixture(scope="module")
def gpt2_inspection():
    return gpt2_model(), inspect_prompt(gpt2_model(), gpt2_tokenizer(),
                                        "Every caf\u00e9 \U0001f994 moves </script> you")


def test_gpt2_token_pieces_are_the_bytes_encoder_json_names(gpt2_inspection):
    _, seen = gpt2_inspection
    names = {i: s for s, i in json.loads(resource_path("gpt2/encoder.json").read_text()).items()}
    decoder = gpt2_byte_decoder()
    expected = [bytes(decoder[c] for c in names[i]) for i in seen.token_ids]
    assert seen.pieces == expected and len(expected) == 10
    assert seen.pieces[2:5] == [b" \xf0\x9f", b"\xa6", b"\x94"]  # one character, three tokens


@pytest.mark.parametrize("text, top_k, error, message", [
    ("", 5, ValueError, "text must encode to at least one token, got an empty prompt"),
    ("a" + " a" * 16, 5, ValueError, "text encodes to 17 tokens, more than the model's "
                              "context_length=16"),
    ("a", 0, ValueError, "top_k must be an int >= 1, got 0"),
    ("a", True, TypeError, "top_k must be an int >= 1, got True"),
    ("a", "5", TypeError, "top_k must be an int >= 1, got '5'"),
    (b"a", 5, TypeError, "text must be a str, got bytes"),
])
def test_bad_input_names_the_parameter(text, top_k, error, message):
    with pytest.raises(error, match=re.escape(message)) as caught:
        inspect_prompt(gpt2_model(), gpt2_tokenizer(), text, top_k=top_k)
    assert caught.value.parameter == message.split()[0]


def test_a_model_without_trace_is_refused_by_name():
    with pytest.raises(TypeError, match=r"model must implement trace\(idx\) -> ModelTrace"):
        inspect_prompt(torch.nn.Linear(2, 2), gpt2_tokenizer(), "a")


class PageChecker(HTMLParser):
    """Balanced elements, and every resource the page could load or link to."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "source", "col", "area", "base", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.references, self.tags = [], [], [], []
        self.scripts, self._in_script = [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "poster", "data", "srcset"):
                self.references.append(value)
        if tag == "script":
            self._in_script = [dict(attrs), ""]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag == "script":
            self.scripts.append(tuple(self._in_script))

    def handle_data(self, data):
        if self._in_script is not None and self.stack and self.stack[-1] == "script":
            self._in_script[1] += data


def test_the_report_is_valid_self_contained_html_holding_the_inspection(gpt2_inspection):
    _, seen = gpt2_inspection
    page = render_html(seen)
    checker = PageChecker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and checker.problems == [] and checker.stack == []
    assert all(ref.startswith("#") for ref in checker.references), checker.references
    assert not re.search(r"[a-z][a-z0-9+.-]*://|url\(|@import", page, flags=re.I)
    assert "link" not in checker.tags and "iframe" not in checker.tags
    (data_attrs, data), (code_attrs, _) = checker.scripts  # the markup-like prompt stayed data
    assert data_attrs == {"id": "report-data", "type": "application/json"} and code_attrs == {}
    data = json.loads(data)
    assert data == json.loads(json.dumps(report_data(seen)))
    assert data["text"] == seen.text and [t["id"] for t in data["tokens"]] == seen.token_ids
    torch.testing.assert_close(torch.tensor(data["attn"], dtype=torch.float32), seen.attentions,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(data["surprisal"], dtype=torch.float32),
                               seen.surprisal, rtol=0, atol=1e-5)


CHROMIUM = find_chromium()
CANVAS_INK = """[...document.querySelectorAll('canvas')].map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) ink++;
  return ink; })"""
TOKEN_ALPHAS = """[...document.querySelectorAll('.tok')].map((b) => {
  const c = getComputedStyle(b).backgroundColor.match(/[\\d.]+/g).map(Number);
  return c.length === 4 ? c[3] : (c[0] === 255 && c[1] === 255 && c[2] === 255 ? 0 : 1); })"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to open the report in: install "
                    "Debian's chromium package (apt-get install chromium) or set $CHROMIUM")
def test_the_report_draws_in_headless_chromium_and_a_click_moves_the_highlight(
        gpt2_inspection, tmp_path):
    import matplotlib.image

    _, seen = gpt2_inspection
    t, n_layers, n_heads = len(seen.token_ids), seen.n_layers, seen.n_heads
    path = write_report(seen, tmp_path / "report.html")
    with Chromium(CHROMIUM) as page:
        page.open(path)
        assert page.evaluate("document.body.dataset.ready") == "true"
        ink = page.evaluate(CANVAS_INK)
        assert len(ink) == n_layers * n_heads + 1 and min(ink) > 0  # model view + head view
        counts = page.evaluate("""({tokens: document.querySelectorAll('.tok').length,
            lens: document.querySelectorAll('#lens tr').length,
            next: document.querySelectorAll('#next-table tr').length,
            lines: document.querySelectorAll('#plots polyline').length})""")
        assert counts == {"tokens": t, "lens": n_layers + 2, "next": t + 1,
                          "lines": 2 * (t + 1) + 2}
        before = page.evaluate(TOKEN_ALPHAS)  # the last token's attention in the last layer
        head_before = page.evaluate(CANVAS_INK)[0]
        x, y = page.evaluate("""(() => { const r = document.querySelectorAll('.tok')[1]
            .getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()""")
        page.click(x, y)
        after = page.evaluate(TOKEN_ALPHAS)
        assert page.evaluate("[...document.querySelectorAll('.tok.selected')]"
                             ".map((b) => +b.dataset.index)") == [1]
        expected = seen.attentions[-1, 0]  # layer L - 1, head 0, as the page starts
        # Colours hold alpha in 8 bits; after the click nothing past token 1 is lit.
        assert before == pytest.approx(expected[t - 1].tolist(), abs=0.004)
        assert after == pytest.approx(expected[1].tolist(), abs=0.004)
        assert page.evaluate(CANVAS_INK)[0] != head_before
        shot = matplotlib.image.imread(io.BytesIO(page.screenshot()), format="png")
        assert shot.shape[:2] == (900, 1280) and shot.std() > 0.05
        assert page.errors() == []
        assert all(url.startswith("file:") for url in page.requested_urls())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A run directory as ``train`` leaves it, and the same weights in Hugging Face's layout."""
    root = tmp_path_factory.mktemp("sources")
    model = gpt2_model()
    run = root / "run"
    run.mkdir()
    config = {"model": dataclasses.asdict(model.cfg), "tokenizer": "gpt2"}
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    save_checkpoint(run, model=model, state={}, meta={"step": 1})
    not_a_model = root / "notes.txt"
    not_a_model.write_text("not weights", encoding="utf-8")
    return {"run": run, "weights": save_pretrained(model, root / "hf"), "text": not_a_model}


@pytest.mark.parametrize("source", ["run", "weights"])
def test_inspect_writes_the_report_for_a_run_or_weights_and_pictures_with_png(
        sources, source, tmp_path, capsys):
    import matplotlib.image

    out, pictures = tmp_path / "report.html", tmp_path / "png"
    png = ["--png", str(pictures)] if source == "run" else []  # drawing PNGs takes seconds
    assert main(["inspect", str(sources[source]), "--prompt", "Every effort moves you",
                 "--out", str(out), "--top-k", "3", *png]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (4 tokens, 2 layers x 2 heads)\n")
    data = json.loads(re.search(r'id="report-data" type="application/json">(.*?)</script>',
                                out.read_text(encoding="utf-8"), flags=re.S).group(1))
    assert [t["id"] for t in data["tokens"]] == [6109, 3626, 6100, 345]
    assert [len(candidates) for candidates in data["top"]] == [3, 3, 3, 3]
    if png:
        names = ["attention.png", "surprisal.png", "logit_lens.png", "stage_sizes.png"]
        assert printed.splitlines()[1:] == [f"wrote {pictures / name}" for name in names]
        for name in names:
            pixels = matplotlib.image.imread(pictures / name)
            assert min(pixels.shape[:2]) > 100 and pixels.std() > 0.01


@pytest.mark.parametrize("argv, message", [
    (["{run}", "--prompt", ""], "--prompt must encode to at least one token, got an empty "
                                "prompt"),
    (["{run}", "--prompt", "a" + " a" * 19], "--prompt encodes to 20 tokens, more than the model's "
                                       "context_length=16"),
    (["{run}", "--top-k", "0"], "--top-k must be an int >= 1, got 0"),
    (["{text}"], "source: '{text}' is not a safetensors file"),
    (["/no/such/run"], "source '/no/such/run' does not exist"),
])
def test_inspect_bad_input_is_one_line_naming_the_flag(sources, argv, message, tmp_path, capsys):
    names = {name: str(path) for name, path in sources.items()}
    argv = [a.format(**names) for a in argv]
    assert main(["inspect", *argv, "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpt-components: error: {message.format(**names)}")
    assert err.count("\n") == 1 and not (tmp_path / "r.html").exists()


MODERN = {  # a small model of each modern family, with grouped-query attention
    "llama3-nano": {},
    "qwen3-nano": {},
    "gemma3-nano": {"sliding_window": 3, "layer_types": ("sliding_attention", "full_attention")},
}


@pytest.mark.parametrize("preset", sorted(MODERN))
def test_inspect_prompt_reads_every_family_through_its_trace(preset):
    from gpt_components.machinery.registry import build_model, preset_config

    cfg = preset_config(preset, vocab_size=TOKENIZER.n_vocab, context_length=16, n_layers=2,
                        **MODERN[preset])
    model = build_model(cfg).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight drawn, norms around 1: nothing left at its init
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + ("norm" in name))
    text = "Jack Gisburn had"
    seen, idx = inspect_prompt(model, TOKENIZER, text, top_k=4), ids_of(text)
    t = idx.shape[1]
    assert cfg.n_kv_heads < cfg.n_heads and 4 <= t <= 16
    trace = model.trace(idx)
    assert seen.attentions.shape == (2, cfg.n_heads, t, t)  # one map per query head
    torch.testing.assert_close(seen.attentions, torch.stack(trace.attentions)[:, 0], **EXACT)
    positions = torch.arange(t)
    for layer, weights in enumerate(seen.attentions):
        window = MODERN[preset].get("sliding_window") if layer == 0 else None
        hidden = positions[None, :] > positions[:, None]  # the future
        if window is not None:
            hidden |= positions[:, None] - positions[None, :] >= window  # and outside the window
        assert torch.all(weights[:, hidden] == 0) and torch.all(weights[:, ~hidden] > 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(cfg.n_heads, t,
                                                               dtype=torch.float64), **EXACT)
    with torch.no_grad():
        logits = model(idx)
        torch.testing.assert_close(logit_lens(model, trace.residuals)[-1], logits, **EXACT)
        torch.testing.assert_close(seen.surprisal.mean(),
                                   calc_loss_batch(idx[:, :-1], idx[:, 1:], model, "cpu"), **EXACT)
        torch.testing.assert_close(seen.final_norms, model.hidden_states(idx)[0].norm(dim=-1),
                                   **EXACT)
    torch.testing.assert_close(seen.top_probs, torch.softmax(logits[0], -1).topk(4).values,
                               **EXACT)
    assert torch.equal(seen.lens_top_ids[-1], seen.top_ids)
    assert len(report_data(seen)["attn"][0]) == cfg.n_heads


def test_a_hybrid_whose_layers_have_different_head_counts_is_inspected_layer_by_layer():
    # Qwen3-Next-80B-A3B's DeltaNet layers have 32 value heads, its attention layers 16: the
    # report keeps each layer's own maps (the ones it lacks NaN in the tensor, absent in the page).
    from gpt_components.machinery.registry import build_model, preset_config

    cfg = preset_config("qwen3-next-nano", vocab_size=TOKENIZER.n_vocab, context_length=16,
                        linear_value_heads=8)
    model = build_model(cfg).double().eval()
    text = "Jack Gisburn had"
    seen, idx = inspect_prompt(model, TOKENIZER, text), ids_of(text)
    trace = model.trace(idx)
    heads = [weights.shape[1] for weights in trace.attentions]
    assert heads == [8, 8, 8, 4] and seen.heads == (8, 8, 8, 4) and seen.n_heads == 8
    for layer, weights in enumerate(trace.attentions):
        h = heads[layer]
        torch.testing.assert_close(seen.attentions[layer, :h], weights[0], **EXACT)
        assert torch.isnan(seen.attentions[layer, h:]).all() and seen.heads_of(layer) == h
    assert [len(maps) for maps in report_data(seen)["attn"]] == heads
    assert "(heads by layer: 8, 8, 8, 4)" in seen.model_summary
