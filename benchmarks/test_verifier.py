"""Benchmarks: grading answers (reasoning.verifier) on MATH-500 and on pathological input.

The spec proves what the guard refuses and that refused text is still graded; how long grading
takes is measured here, never asserted. Caches are cleared before every round (the guard and the
parser keep 4,096 texts each), so a round pays for the whole path. math-verify grades the same
500 pairs as the outside reference. CPU only.
"""

from __future__ import annotations

import pytest

from gpt_components.reasoning.answer_guard import guarded_code, guarded_eval
from gpt_components.reasoning.math500 import load_math500_test
from gpt_components.reasoning.verifier import grade_answer

PATHOLOGICAL = {
    "tower": r"10^{10^{10}}",
    "factorial": r"(10^{10})!",
    "float": "1e999999",
    "nesting": "(" * 5000 + "1" + ")" * 5000,
    "root": r"\sqrt{10^{999}+7}",
    "unclosed sqrt": r"\sqrt{" * 20000,
    "trig power": "(sin(x)+cos(x)-tan(y)+3)^{10}",
}


def _fresh(*args):
    guarded_code.cache_clear()
    guarded_eval.cache_clear()
    return args, {}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_grade_pathological(benchmark, name):
    text = PATHOLOGICAL[name]
    benchmark.pedantic(grade_answer, setup=lambda: _fresh(text, "1"), rounds=3)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return [(p["answer"].replace(r"\frac", r"\dfrac"), p["answer"]) for p in load_math500_test()]


def test_grade_math500_answers_rewritten(benchmark, pairs):
    def grade_all():
        guarded_code.cache_clear()
        guarded_eval.cache_clear()
        return sum(grade_answer(pred, gt) for pred, gt in pairs)

    assert benchmark.pedantic(grade_all, rounds=3, warmup_rounds=1) == len(pairs)


def test_grade_math500_answers_rewritten_math_verify(benchmark, pairs):
    from math_verify import parse, verify

    def grade_all():
        return sum(bool(verify(parse(f"${gt}$"), parse(f"${pred}$"))) for pred, gt in pairs)

    assert benchmark.pedantic(grade_all, rounds=1, warmup_rounds=0) == len(pairs)
