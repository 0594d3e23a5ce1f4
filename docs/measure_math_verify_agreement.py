"""Measure where the verifier (the sequel's grader) and math-verify agree, for docs/reasoning.md.

Each of MATH-500's 500 reference answers is graded against predictions written in several ways
(the same value in other LaTeX, as a fraction or a decimal, with `x =`, a unit or `\\%` around
it, spaced out; a different bundled answer; the answer with its first number changed), by
`grade_answer` and by math-verify (`verify(parse("$gt$"), parse("$pred$"))`). Prints one
Markdown table row per way of writing: the cases, how many the two agree on, and how many only
one of them grades correct, with an example of each disagreement. About a minute on 2 cores
(math-verify parses every text afresh).

    python docs/measure_math_verify_agreement.py
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

import sympy
from math_verify import parse, verify

from gpt_components.reasoning.math500 import load_math500_test
from gpt_components.reasoning.verifier import grade_answer, normalize_text, sympy_parser


def value_of(answer: str) -> Fraction | None:
    value = sympy_parser(normalize_text(answer))
    return Fraction(int(value.p), int(value.q)) if isinstance(value, sympy.Rational) else None


def decimal_of(value: Fraction) -> str | None:
    for places in range(12):
        scaled = value * 10 ** places
        if scaled.denominator == 1:
            return f"{float(value):.{places}f}"
    return None


def bumped(answer: str) -> str | None:
    match = re.search(r"\d+", answer)
    return None if match is None else (
        answer[:match.start()] + str(int(match.group()) + 1) + answer[match.end():])


FORMS = {
    "the same, `\\frac` as `\\dfrac`": lambda a, other: a.replace(r"\frac", r"\dfrac"),
    "its value as `p/q`": lambda a, other: (
        None if value_of(a) is None else f"{value_of(a).numerator}/{value_of(a).denominator}"),
    "its value as a decimal": lambda a, other: (
        None if value_of(a) is None or value_of(a).denominator == 1 else decimal_of(value_of(a))),
    "`x = ` before it": lambda a, other: f"x = {a}",
    "a unit after it (`\\text{ units}`)": lambda a, other: a + r" \text{ units}",
    "`\\%` after it": lambda a, other: a + r"\%",
    "spaced out around commas": lambda a, other: a.replace(",", " , "),
    "another bundled answer": lambda a, other: other if other != a else None,
    "its first number plus one": lambda a, other: bumped(a),
}


def main() -> None:
    answers = [p["answer"] for p in load_math500_test()]
    others = random.Random(0).sample(answers, len(answers))
    print("| prediction written as | cases | agree | only ours correct | "
          "only math-verify correct |")
    print("|---|---|---|---|---|")
    for name, form in FORMS.items():
        cases = agree = 0
        ours_only: list[tuple[str, str]] = []
        theirs_only: list[tuple[str, str]] = []
        for answer, other in zip(answers, others, strict=True):
            pred = form(answer, other)
            if pred is None:
                continue
            ours = grade_answer(pred, answer)
            theirs = bool(verify(parse(f"${answer}$"), parse(f"${pred}$")))
            cases += 1
            agree += ours == theirs
            (ours_only if ours and not theirs else theirs_only if theirs and not ours
             else []).append((answer, pred))

        def shown(found: list[tuple[str, str]]) -> str:
            return f"{len(found)}" + (f" (`{found[0][1]}` for `{found[0][0]}`)" if found else "")

        print(f"| {name} | {cases} | {agree} ({agree / cases:.0%}) | {shown(ours_only)} | "
              f"{shown(theirs_only)} |")


if __name__ == "__main__":
    main()
