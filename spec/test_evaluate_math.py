"""Spec for reasoning.evaluate and ``gpt-components evaluate-math``.

References: exact enumeration of k-subsets (``itertools.combinations``, ``fractions``) for
pass@k; ``generation.generate`` run on its own for the answers; counting with ``Counter`` for
the summaries and the vote; an uninterrupted run for a resumed one. The model is a small Qwen3
with random weights saved in Hugging Face's layout, beside a ``tokenizer.json`` trained by the
``tokenizers`` library on MATH-500's problems, with Qwen3's chat markers.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpt_components.cli import main
from gpt_components.generation import generate
from gpt_components.machinery.pretrained import save_pretrained
from gpt_components.machinery.registry import build_model, preset_config
from gpt_components.machinery.sources import load_model_and_tokenizer, load_tokenizer_spec
from gpt_components.reasoning.evaluate import (
    evaluate_math,
    format_math_summary,
    pass_at_k,
    read_math_records,
    summarize_math,
)
from gpt_components.reasoning.math500 import load_math500_test
from gpt_components.reasoning.verifier import extract_final_candidate, grade_answer, render_prompt

pytestmark = pytest.mark.reasoning

PROBLEMS = load_math500_test()
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    """A small Qwen3 with random weights and a real tokenizer.json (Qwen3's chat markers)."""
    library = Tokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = decoders.ByteLevel()
    text = [render_prompt(p["problem"]) + " \\boxed{" + p["answer"] + "}" for p in PROBLEMS]
    library.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory = tmp_path_factory.mktemp("qwen3")
    library.save(str(directory / "tokenizer.json"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(preset_config("qwen3-nano", vocab_size=library.get_vocab_size(),
                                          context_length=1024, n_layers=1))
    save_pretrained(model, directory)
    return directory


@pytest.fixture(scope="module")
def loaded(qwen3_dir):
    model, tokenizer, _ = load_model_and_tokenizer(qwen3_dir)
    return model, tokenizer


# -- pass@k -------------------------------------------------------------------------------------

@settings(deadline=None)
@given(n=st.integers(1, 10), data=st.data())
def test_pass_at_k_is_the_share_of_k_subsets_that_hold_a_correct_sample(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    subsets = list(itertools.combinations(range(n), k))  # samples 0 .. c-1 are the correct ones
    exact = Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_refuses_counts_that_cannot_be():
    for args, parameter in (((0, 0, 1), "n"), ((3, 4, 1), "c"), ((3, -1, 1), "c"),
                            ((3, 1, 0), "k"), ((3, 1, 4), "k")):
        with pytest.raises(ValueError, match=f"^{parameter} must be") as error:
            pass_at_k(*args)
        assert error.value.parameter == parameter


# -- the evaluation loop ------------------------------------------------------------------------

def test_each_record_holds_the_models_own_answer_and_its_grade(loaded, tmp_path):
    model, tokenizer = loaded
    out = tmp_path / "greedy.jsonl"
    summary = evaluate_math(model, tokenizer, PROBLEMS[:2], out, max_new_tokens=6)
    settings_line, records = read_math_records(out)
    assert settings_line["samples"] == 1 and len(records) == 2
    for index, (problem, record) in enumerate(zip(PROBLEMS, records, strict=False)):
        ids = torch.tensor([tokenizer.encode(render_prompt(problem["problem"]))])
        reference = generate(model, ids, 6, eos_id=tokenizer.eot_token)[0, ids.shape[1]:]
        assert record["output"] == tokenizer.decode(reference.tolist())
        assert record["id"] == problem["unique_id"] and record["index"] == index
        assert record["prompt"] == render_prompt(problem["problem"])
        assert record["extracted"] == extract_final_candidate(record["output"])
        assert record["verdict"] is grade_answer(record["extracted"], problem["answer"])
    assert summary == summarize_math(records)


def test_an_interrupted_evaluation_resumes_to_what_an_uninterrupted_one_writes(loaded,
                                                                               tmp_path):
    model, tokenizer = loaded
    run = {"samples": 3, "vote": True, "temperature": 1.5, "top_p": 0.95, "max_new_tokens": 5,
           "seed": 7}
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    evaluate_math(model, tokenizer, PROBLEMS[:3], whole, **run)
    evaluate_math(model, tokenizer, PROBLEMS[:1], cut, **run)
    lines = whole.read_bytes().split(b"\n")
    with open(cut, "ab") as f:  # a kill in the middle of the second record
        f.write(lines[2][: len(lines[2]) // 2])
    summary = evaluate_math(model, tokenizer, PROBLEMS[:3], cut, **run)
    assert cut.read_bytes() == whole.read_bytes()
    _, records = read_math_records(cut)
    for record in records:
        ranked = Counter(record["extracted_all"]).most_common()
        tie = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
        assert record["extracted"] == (None if tie else ranked[0][0])
        assert record["correct"] == [grade_answer(e, record["answer"])
                                     for e in record["extracted_all"]]
    assert summary["pass_at_k"][3] == pytest.approx(
        sum(any(r["correct"]) for r in records) / 3)


def test_a_file_of_other_settings_or_another_kind_is_refused_untouched(loaded, tmp_path):
    model, tokenizer = loaded
    out = tmp_path / "one.jsonl"
    evaluate_math(model, tokenizer, PROBLEMS[:1], out, max_new_tokens=2)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens=2\)") as error:
        evaluate_math(model, tokenizer, PROBLEMS[:1], out, max_new_tokens=3)
    assert error.value.parameter == "out" and out.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nmore notes\n", encoding="utf-8")
    for text in ("my notes\nmore notes\n", "no newline yet"):
        notes.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="is not an evaluate-math file") as error:
            evaluate_math(model, tokenizer, PROBLEMS[:1], notes, max_new_tokens=2)
        assert error.value.parameter == "out" and notes.read_text(encoding="utf-8") == text


def test_bad_arguments_are_refused_before_any_file_is_written(loaded, tmp_path):
    model, tokenizer = loaded
    out = tmp_path / "never.jsonl"
    for kwargs, parameter in (({"samples": 0}, "samples"), ({"tokenizer": None}, "tokenizer"),
                              ({"problems": [{"problem": 1, "answer": "2"}]}, "problems"),
                              ({"problems": []}, "problems"),
                              ({"samples": 2}, "temperature"),
                              ({"top_p": 0.0, "temperature": 1.0}, "top_p"),
                              ({"max_new_tokens": 0}, "max_new_tokens"),
                              ({"chat": True, "tokenizer": load_tokenizer_spec("gpt2")},
                               "tokenizer")):
        arguments = {"model": model, "tokenizer": tokenizer, "problems": PROBLEMS[:1],
                     "out": out, **kwargs}
        with pytest.raises(ValueError) as error:
            evaluate_math(**arguments)
        assert error.value.parameter == parameter, kwargs
        assert not out.exists()


records_strategy = st.lists(st.fixed_dictionaries({
    "subject": st.sampled_from(["Algebra", "Geometry", "Number Theory"]),
    "level": st.integers(1, 5), "verdict": st.booleans(),
    "correct": st.lists(st.booleans(), min_size=4, max_size=4)}), min_size=1, max_size=30)


@settings(deadline=None)
@given(records=records_strategy)
def test_the_summary_counts_each_subject_and_level_and_averages_pass_at_k(records):
    summary = summarize_math(records, samples=4)
    assert summary["correct"] == sum(r["verdict"] for r in records)
    assert summary["total"] == len(records)
    for key, field in (("by_subject", "subject"), ("by_level", "level")):
        totals = Counter(str(r[field]) for r in records)
        right = Counter(str(r[field]) for r in records if r["verdict"])
        assert summary[key] == {name: [right[name], totals[name]] for name in sorted(totals)}
    assert set(summary["pass_at_k"]) == {1, 2, 4}
    assert summary["pass_at_k"][1] == pytest.approx(
        sum(sum(r["correct"]) for r in records) / (4 * len(records)))
    assert summary["pass_at_k"][4] == pytest.approx(
        sum(any(r["correct"]) for r in records) / len(records))
    lines = format_math_summary(summary)
    assert lines[0].startswith("accuracy: ") and len(lines) == 1 + len(
        summary["by_subject"]) + len(summary["by_level"]) + 3


# -- the command line ---------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_math_runs_end_to_end_and_resumes_with_nothing_left(qwen3_dir, tmp_path,
                                                                     capsys):
    out = tmp_path / "math.jsonl"
    command = ["evaluate-math", str(qwen3_dir), "--limit", "2", "--max-new-tokens", "4",
               "--out", str(out), "--no-progress"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    _, records = read_math_records(out)
    assert [r["id"] for r in records] == [p["unique_id"] for p in PROBLEMS[:2]]
    right = sum(r["verdict"] for r in records)
    assert printed.startswith(f"accuracy: {right / 2:.1%} ({right}/2)\n")
    before = out.read_bytes()
    assert main(command[:-1]) == 0 and out.read_bytes() == before  # all held: nothing to do
    assert capsys.readouterr().out == printed
    chat = ["evaluate-math", str(qwen3_dir), "--limit", "1", "--max-new-tokens", "3", "--chat",
            "--samples", "3", "--vote", "--temperature", "1.0", "--out", str(tmp_path / "c"),
            "--no-progress"]
    assert main(chat) == 0
    assert "pass@3" in capsys.readouterr().out
    assert read_math_records(tmp_path / "c")[0]["chat"] is True
    corpus = tmp_path / "corpus.txt"  # a run directory of `train` is a source too
    corpus.write_text(" ".join(p["problem"] for p in PROBLEMS[:20]), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--preset", "gpt-nano", "--steps", "1", "--run-dir", str(run),
                 "--corpus", str(corpus), "--context-length", "32", "--sample-tokens", "0",
                 "--no-progress"]) == 0
    assert main(["evaluate-math", str(run), "--limit", "1", "--max-new-tokens", "2",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert read_math_records(tmp_path / "r")[1][0]["id"] == PROBLEMS[0]["unique_id"]


@pytest.mark.slow
def test_sigterm_keeps_every_finished_record_and_the_same_command_goes_on(qwen3_dir, tmp_path):
    out, whole = tmp_path / "stopped.jsonl", tmp_path / "whole.jsonl"
    flags = [str(qwen3_dir), "--limit", "6", "--max-new-tokens", "24", "--no-progress"]
    child = subprocess.Popen([sys.executable, "-m", "gpt_components.cli", "evaluate-math",
                              *flags, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None and (
                not out.exists() or out.read_bytes().count(b"\n") < 2):
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    kept = out.read_bytes().count(b"\n") - 1
    assert child.returncode == 143 and 1 <= kept < 6
    assert err.strip().splitlines()[-1] == (f"gpt-components: stopped by SIGTERM: {kept} problem "
                                            f"record(s) are kept in {out}; the same command goes "
                                            "on from there")
    assert main(["evaluate-math", *flags, "--out", str(out)]) == 0
    assert main(["evaluate-math", *flags, "--out", str(whole)]) == 0
    assert out.read_bytes() == whole.read_bytes()


def test_bad_flags_are_one_line_naming_the_flag(qwen3_dir, tmp_path, capsys):
    bare = tmp_path / "no-tokenizer"
    save_pretrained(build_model(preset_config("qwen3-nano", vocab_size=320, n_layers=1)), bare)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"problem": "1+1", "answer": "2"}), encoding="utf-8")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an evaluation\n", encoding="utf-8")
    source = str(qwen3_dir)
    for argv, start in (
            ([source, "--samples", "0"], "--samples must be an int >= 1, got 0"),
            ([source, "--limit", "0"], "--limit must be an int >= 1, got 0"),
            ([source, "--dataset", "math50"], "--dataset must be one of ['math500']"),
            ([source, "--dataset", str(wrong)], "--dataset must hold a list of problem records"),
            ([source, "--top-p", "0"], "--top-p must be a float in (0, 1]"),
            ([source, "--out", str(notes)], "--out: "),
            ([str(bare)], f"source {str(bare)!r} holds weights with a vocabulary of 320 ids "
                          "but no tokenizer")):
        assert main(["evaluate-math", *argv, "--no-progress"]) == 2, argv
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(f"gpt-components: error: {start}"), error
