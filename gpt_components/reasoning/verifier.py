"""Verifiable answers (the sequel's chapter 3): find a model's final answer and grade it.

A math problem with one right answer needs no judge: pull the answer out of the model's text
(the last ``\\boxed{...}``, else the last number), rewrite both it and the reference into plain
arithmetic (``\\dfrac{14}{3}`` -> ``(14)/(3)``), read both with sympy and ask whether their
difference is zero. The names, signatures and behaviour are the sequel's
(``reasoning_from_scratch.ch03``): ``get_last_boxed``, ``extract_final_candidate``,
``normalize_text``, ``sympy_parser``, ``equality_check``, ``split_into_parts``,
``grade_answer`` and ``render_prompt``.

Two things change, so that grading any text answers quickly. A model's text is untrusted
input, and sympy evaluates while it parses: a tower ``10^{10^{10}}``, a factorial
``(10^{10})!`` or ``1e999999`` would hang it, and brackets thousands deep would crash it. So
``sympy_parser`` evaluates only what ``answer_guard`` lets through (it reads the code sympy would
run and bounds the size of every number on the way); ``refusal_reason`` says why a text was
refused, and a refused text still grades equal to the same text and unequal to anything else.
And the sequel's ``simplify(difference) == 0``, whose time has no bound, becomes an evaluation
of the difference at generic points (``equality_check``): every zero ``simplify`` proves is
still found.

>>> extract_final_candidate(r"... so the answer is \\boxed{\\dfrac{14}{3}}.")
'\\\\dfrac{14}{3}'
>>> normalize_text(r"\\dfrac{14}{3}")
'(14)/(3)'
>>> grade_answer(r"\\dfrac{14}{3}", "14/3"), grade_answer("(2, 1)", "(1, 2)")
(True, False)
>>> from gpt_components.reasoning.answer_guard import refusal_reason
>>> refusal_reason(normalize_text("10^{10^{10}}"))
'a number of more than 2000 digits (10^{10^{11}} digits at most)'
>>> grade_answer("10^{10^{10}}", "10^{10^{10}}"), grade_answer("10^{10^{10}}", "1")
(True, False)
"""

from __future__ import annotations

import re
from typing import Any

from sympy import Float, I, Rational, S

from ..machinery.checks import check_choice, check_str
from .answer_guard import guarded_eval
from .math500 import load_math500_test  # noqa: F401  (the sequel's ch03 has it beside these)

__all__ = [
    "get_last_boxed",
    "extract_final_candidate",
    "normalize_text",
    "sympy_parser",
    "equality_check",
    "split_into_parts",
    "grade_answer",
    "render_prompt",
    "strip_chat_markers",
]

# A number as the sequel finds one in free text: an optional sign, then a fraction a/b or a
# decimal with an optional exponent.
RE_NUMBER = re.compile(r"-?(?:\d+/\d+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)")

# Chat-template markers such as <|im_end|> that a decoded answer may still carry.
RE_SPECIAL = re.compile(r"<\|[^>]+?\|>")

# LaTeX that changes how an answer looks, not its value: (pattern, replacement), in order.
LATEX_FIXES = (
    (r"\\left\s*", ""),
    (r"\\right\s*", ""),
    (r"\\,|\\!|\\;|\\:", ""),  # thin and negative spaces
    (r"\\cdot", "*"),
    (r"\u00B7|\u00D7", "*"),  # middle dot, multiplication sign
    (r"\\\^\\circ", ""),
    (r"\\dfrac", r"\\frac"),
    (r"\\tfrac", r"\\frac"),
    (r"°", ""),
)

FALLBACKS = ("number_then_full", "number_only", "none")


def get_last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` in ``text`` (nested braces kept), or None when
    there is none, its ``{`` is missing or its braces never close."""
    start = text.rfind(r"\boxed")
    if start == -1:
        return None
    i = start + len(r"\boxed")
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, first = 1, i + 1
    i = first
    while i < len(text) and depth > 0:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[first:i - 1] if depth == 0 else None


def extract_final_candidate(text: str, fallback: str = "number_then_full") -> str:
    """The answer a model's ``text`` ends on: its last ``\\boxed{...}`` (stripped of spaces and
    ``$``); without one, by ``fallback``: ``"number_then_full"`` the last number, else the whole
    text; ``"number_only"`` the last number, else ``""``; ``"none"`` always ``""``."""
    check_choice("fallback", fallback, FALLBACKS)
    if not check_str("text", text, empty=True, optional=True):
        return ""
    boxed = get_last_boxed(text.strip())
    if boxed:
        return boxed.strip().strip("$ ")
    if fallback == "none":
        return ""
    numbers = RE_NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    return text if fallback == "number_then_full" else ""


def normalize_text(text: str) -> str:
    """``text`` rewritten as plain, lower-case arithmetic sympy can read: chat markers, degree
    signs, ``$``, ``%`` and spacing commands dropped, a whole-string ``\\text{...}`` unwrapped,
    ``\\frac{a}{b}`` -> ``(a)/(b)``, ``\\sqrt{a}`` -> ``sqrt(a)``, ``^`` -> ``**``, a mixed number
    ``3 1/2`` -> ``3+1/2``, ``1,234`` -> ``1234``, braces removed."""
    if not text:
        return ""
    check_str("text", text)
    text = strip_chat_markers(text).strip()
    text = re.sub(r"\^\s*\{\s*\\circ\s*\}", "", text)  # ^{\circ}
    text = re.sub(r"\^\s*\\circ", "", text)  # ^\circ
    text = text.replace("°", "")
    # Math delimiters first (``\(``, ``\)``, ``\[``, ``\]`` and an unescaped ``$``), so that a
    # \text{...} they wrap is still the whole string.
    text = re.sub(r"\\\(|\\\)|\\\[|\\\]|(?<!\\)\$", "", text).strip()
    whole = re.match(r"^\\text\{(?P<x>.+?)\}$", text)
    if whole:
        text = whole.group("x")
    for pattern, replacement in LATEX_FIXES:
        text = re.sub(pattern, replacement, text)
    text = text.replace("\\%", "%").replace("$", "").replace("%", "")
    text = _sub_before_last(re.compile(r"\\sqrt\s*\{([^}]*)\}"), r"sqrt(\1)", text, "}")
    text = re.sub(r"\\sqrt\s+([^\\\s{}]+)", r"sqrt(\1)", text)
    text = re.sub(r"\\frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\\frac\s+([^\s{}]+)\s+([^\s{}]+)", r"(\1)/(\2)", text)
    text = text.replace("^", "**")
    text = re.sub(r"(?<=\d)\s+(\d+/\d+)", r"+\1", text)  # 3 1/2 -> 3+1/2
    text = re.sub(r"(?<=\d),(?=\d\d\d(\D|$))", "", text)  # 1,234 -> 1234
    return text.replace("{", "").replace("}", "").strip().lower()


def strip_chat_markers(text: str) -> str:
    """``RE_SPECIAL.sub("", text)`` in linear time: the regex retries every ``<|`` up to the
    next ``>``, quadratic on ``<|<|<|...``; here each ``>`` is found once."""
    kept, i, close = [], 0, -1
    start = text.find("<|")
    while start != -1:
        if close < start + 2:
            close = text.find(">", start + 2)
            if close == -1:
                break
        if close - start >= 4 and text[close - 1] == "|":  # <|, one char or more, |>
            kept.append(text[i:start])
            i = close + 1
            start = text.find("<|", i)
        else:
            start = text.find("<|", start + 1)
    kept.append(text[i:])
    return "".join(kept)


def _sub_before_last(pattern: re.Pattern[str], replacement: str, text: str, closer: str) -> str:
    """``pattern.sub(replacement, text)`` for a pattern whose every match ends with ``closer``:
    applied only up to the last ``closer``, where it gives the same result in linear time (past
    it, each opening would scan to the end of the text and fail, quadratic in all)."""
    end = text.rfind(closer) + 1
    return pattern.sub(replacement, text[:end]) + text[end:]


def sympy_parser(expr: str) -> Any:
    """``expr`` read by sympy as the sequel reads it (standard transformations plus implicit
    multiplication, evaluated: ``"2x + 3x"`` is ``5*x``), or None when it is not an expression
    or ``refusal_reason`` refuses it."""
    return guarded_eval(expr) if isinstance(expr, str) else None


def equality_check(expr_gtruth: str, expr_pred: str) -> bool:
    """Whether two normalized answers are equal: the same text, or sympy expressions whose
    difference is 0.

    The sequel asks ``simplify(difference) == 0``, which took seconds, and on a tenth power of a
    sum of sines minutes, for differences of a few dozen operations. ``simplify`` is only needed
    to prove a zero, and it keeps values: so the difference is evaluated instead. One that is
    a nonzero number, holds a division by zero, or evaluates at a generic real point (30 digits)
    to a number clearly away from zero is not zero. Any other is evaluated to 50 digits, at
    three generic complex points when it has symbols (one per quadrant, so ``Abs(x)`` and
    ``sqrt(x**2)`` are not ``x``): below ``1e-20`` of the two sides at every point is zero, and
    a difference that does not evaluate to a finite number there is not. Every zero
    ``simplify`` proves is found, and identities it misses too; decimals keep the sequel's
    verdicts (``0.5`` is ``1/2``, ``0.3333333333`` is not ``1/3``).
    """
    if expr_gtruth == expr_pred:
        return True
    gtruth, pred = sympy_parser(expr_gtruth), sympy_parser(expr_pred)
    if gtruth is None or pred is None:
        return False
    try:
        difference = gtruth - pred
        if difference == 0:
            return True
        if difference.is_Number or difference.has(S.ComplexInfinity, S.NaN):
            return False  # exact and nonzero, or a division by zero left in it
        sides = (difference, gtruth, pred)
        first = _relative_size(sides, _REAL_PROBES, 30)
        if first is None or first > _ZERO:
            return False
        points = _COMPLEX_PROBES if difference.free_symbols else _REAL_PROBES[:1]
        sizes = [_relative_size(sides, probes, 50) for probes in points]
        return all(size is not None and size <= _ZERO for size in sizes)
    except Exception:  # tuples, relations, sets: no difference to take
        return False


# Generic points: the i-th symbol (by name) takes the i-th value, where no answer's expression
# is singular or zero by accident.
_REAL_PROBES = (Rational(7, 11), Rational(23, 13), Rational(41, 17), Rational(59, 19))
_COMPLEX_PROBES = tuple(tuple(re * Rational(sign_re) + I * im * Rational(sign_im)
                              for re, im in zip(_REAL_PROBES, (Rational(3, 13), Rational(5, 7),
                                                               Rational(2, 9), Rational(4, 11)),
                                                strict=True))
                        for sign_re, sign_im in ((1, 1), (-1, 1), (-1, -1)))
_ZERO = Float("1e-20")  # far above 50 digits' rounding, far below any answer's difference


def _relative_size(sides: tuple[Any, Any, Any], probes: tuple[Any, ...], digits: int) -> Any:
    """|difference| / max(1, |gtruth|, |pred|) at the point ``probes`` names, to ``digits``
    digits in sympy's floats (whose exponents do not overflow); None when one of them does not
    evaluate to a finite number there."""
    symbols = sorted(sides[0].free_symbols | sides[1].free_symbols | sides[2].free_symbols,
                     key=str)
    point = {s: probes[i % len(probes)] + i // len(probes) for i, s in enumerate(symbols)}
    try:
        sizes = [abs(side.evalf(digits, subs=point)) for side in sides]
    except (TypeError, ValueError, ArithmeticError):
        return None
    if not all(size.is_Float or size.is_zero for size in sizes):
        return None
    return sizes[0] / max(Float(1), sizes[1], sizes[2])


def split_into_parts(text: str) -> list[str]:
    """A tuple or list answer ``(a, b)`` / ``[a, b]`` as its parts in order, any other text as
    itself, ``""`` as no parts."""
    if not text:
        return []
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and "," in text[1:-1]:
        parts = [part.strip() for part in text[1:-1].split(",")]
        if all(parts):
            return parts
    return [text]


def grade_answer(pred_text: str | None, gt_text: str | None) -> bool:
    """Whether the predicted answer equals the reference: both normalized, split into the same
    number of parts, each part equal in order (``equality_check``). None on either side is
    False; so is any text the guard refuses, unless the two texts normalize to the same one."""
    check_str("pred_text", pred_text, empty=True, optional=True)
    check_str("gt_text", gt_text, empty=True, optional=True)
    if pred_text is None or gt_text is None:
        return False
    gt_parts = split_into_parts(normalize_text(gt_text))
    pred_parts = split_into_parts(normalize_text(pred_text))
    if not gt_parts or len(gt_parts) != len(pred_parts):
        return False
    return all(equality_check(gt, pred) for gt, pred in zip(gt_parts, pred_parts, strict=True))


def render_prompt(prompt: str) -> str:
    """The sequel's prompt: ``prompt`` as a question, with the request to box the answer."""
    check_str("prompt", prompt, empty=True)
    return ("You are a helpful math assistant.\n"
            "Answer the question and write the final result on a new line as:\n"
            "\\boxed{ANSWER}\n\n"
            f"Question:\n{prompt}\n\nAnswer:")
