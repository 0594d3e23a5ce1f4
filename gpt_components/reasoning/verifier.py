"""Verifiable answers (the sequel's chapter 3): find a model's final answer and grade it.

A math problem with one right answer needs no judge: pull the answer out of the model's text
(the last ``\\boxed{...}``, else the last number), rewrite both it and the reference into plain
arithmetic (``\\dfrac{14}{3}`` -> ``(14)/(3)``), and ask sympy whether their difference
simplifies to zero. The names, signatures and behaviour are the sequel's
(``reasoning_from_scratch.ch03``): ``get_last_boxed``, ``extract_final_candidate``,
``normalize_text``, ``sympy_parser``, ``equality_check``, ``split_into_parts``,
``grade_answer`` and ``render_prompt``.

One thing is added, and it changes no verdict the sequel reaches in time: a model's text is
untrusted input, and sympy evaluates while it parses. ``10^{10^{10}}`` asks for a number of ten
billion digits, ``(10^{10})!`` for a factorial no machine holds, ``1e999999`` hangs sympy's
``Float``, brackets thousands deep exhaust Python's parser, and ``x.__class__`` is an attribute
access that ``parse_expr`` would run. So ``sympy_parser`` first turns the text into Python code
(sympy's own token transformations, which evaluate nothing), reads that code as a syntax tree,
and evaluates it only when every node is arithmetic it knows and an upper bound on the digits
of every number it would compute stays within a budget. ``refusal_reason`` says why a text was
refused (``None``: it was evaluated); a refused text still grades equal to the same text.

>>> extract_final_candidate(r"... so the answer is \\boxed{\\dfrac{14}{3}}.")
'\\\\dfrac{14}{3}'
>>> normalize_text(r"\\dfrac{14}{3}")
'(14)/(3)'
>>> grade_answer(r"\\dfrac{14}{3}", "14/3"), grade_answer("(2, 1)", "(1, 2)")
(True, False)
>>> refusal_reason(normalize_text("10^{10^{10}}"))
'a number of more than 2000 digits (10^{10^{11}} digits or so)'
>>> grade_answer("10^{10^{10}}", "10^{10^{10}}"), grade_answer("10^{10^{10}}", "1")
(True, False)
"""

from __future__ import annotations

import ast
import functools
import math
import re
from typing import Any

from sympy import simplify
from sympy.parsing import sympy_parser as spp

from ..machinery.checks import check_choice, check_str

__all__ = [
    "get_last_boxed",
    "extract_final_candidate",
    "normalize_text",
    "sympy_parser",
    "equality_check",
    "split_into_parts",
    "grade_answer",
    "render_prompt",
    "refusal_reason",
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
    whole = re.match(r"^\\text\{(?P<x>.+?)\}$", text)
    if whole:
        text = whole.group("x")
    text = re.sub(r"\\\(|\\\)|\\\[|\\\]", "", text)  # inline and display math delimiters
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


# -- the guard: what sympy may evaluate ---------------------------------------------------------

MAX_CHARS = 400  # a normalized answer longer than this is compared as text only
MAX_NESTING = 40  # brackets deeper than this: Python's parser gives up near 200
MAX_NODES = 300  # syntax-tree nodes; simplify's time grows fast with the expression
MAX_DIGITS = 2000  # an exact number up to this long costs microseconds
MAX_ROOT_DIGITS = 200  # sympy factors a number to take its root or logarithm: keep those short
SYMBOL_DIGITS = 10  # a symbol counts as a 10-digit number, so (x+1)**200 is refused as 10**200 is

_TRANSFORMATIONS = (*spp.standard_transformations, spp.implicit_multiplication_application)
_NAMESPACE: dict[str, Any] = {}
exec("from sympy import *", _NAMESPACE)  # the names parse_expr resolves against, as it does
_NAMESPACE["__builtins__"] = {}  # the code that passes the guard calls no builtin

_CONSTANTS = {"pi", "E", "I", "oo", "zoo", "nan"}
_KEEP_SIZE = {"sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "sinh",
              "cosh", "tanh", "Abs", "sign", "floor", "ceiling", "re", "im", "arg", "conjugate",
              "Max", "Min", "gcd", "lcm"}
_ROOTS = {"sqrt", "cbrt", "root", "log", "ln"}
_FACTORIALS = {"factorial", "factorial2", "gamma", "subfactorial", "binomial"}
_NUMBER = re.compile(r"(\d*)\.?(\d*)(?:[eE]([+-]?\d+))?")
_SYMBOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class _Refused(Exception):
    """The guard's answer: this code would compute something too large (the reason)."""


def _literal(node: ast.AST) -> Any:
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        raise _Refused("a bare Python literal")
    return node.value


def _integer_digits(value: Any) -> float:
    if not isinstance(value, int):
        raise _Refused(f"Integer of {type(value).__name__}")
    return math.log10(abs(value) + 1)


def _float_digits(value: Any) -> float:
    match = _NUMBER.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _Refused(f"Float of {value!r}")
    whole, fraction, exponent = match.groups()
    if len(exponent or "") > 6:
        raise _Refused("a float exponent of more than six digits")
    return len(whole) + len(fraction) + abs(int(exponent or 0))


def _budget(digits: float) -> float:
    if not digits <= MAX_DIGITS:  # also catches inf and NaN from an overflowing bound
        raise _Refused(f"a number of more than {MAX_DIGITS} digits"
                       + (f" (10^{{10^{{{math.log10(digits):.0f}}}}} digits or so)"
                          if math.isfinite(digits) and digits > 1e6 else ""))
    return digits


def _value_bound(digits: float) -> float:
    """An upper bound on |v| for a number of at most ``digits`` digits (inf past 10^300)."""
    return 10.0 ** digits if digits < 300 else math.inf


def _is_integer_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "Integer")


def _digits(node: ast.AST) -> float:
    """An upper bound on the digits (numerator and denominator together) of any number that
    evaluating ``node`` computes; _Refused for anything that is not arithmetic or is too large."""
    if isinstance(node, ast.Expression):
        return _digits(node.body)
    if isinstance(node, ast.Name):
        if node.id not in _CONSTANTS:
            raise _Refused(f"the name {node.id!r}")
        return 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _digits(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)):
        return _budget(sum(_digits(item) for item in node.elts))
    if isinstance(node, ast.Compare) and all(
            isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops):
        return _budget(sum(_digits(item) for item in (node.left, *node.comparators)))
    if isinstance(node, ast.BinOp):
        return _binary_digits(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return _call_digits(node.func.id, node.args)
    raise _Refused(f"Python syntax {type(node).__name__}")


def _binary_digits(node: ast.BinOp) -> float:
    left, right = _digits(node.left), _digits(node.right)
    if isinstance(node.op, (ast.Add, ast.Sub)):
        return _budget(left + right + 1)  # a/b + c/d = (ad + bc)/bd
    if isinstance(node.op, (ast.Mult, ast.Div)):
        return _budget(left + right)
    if isinstance(node.op, ast.Pow):
        if not _is_integer_literal(node.right) and left > MAX_ROOT_DIGITS:
            raise _Refused(f"a root of a number of more than {MAX_ROOT_DIGITS} digits")
        return _budget(max(left, 1.0) * _value_bound(right))  # |a^b| <= |a|^|b|
    raise _Refused(f"the operator {type(node.op).__name__}")


def _call_digits(name: str, args: list[ast.expr]) -> float:
    if name == "Integer" and len(args) == 1:
        return _budget(_integer_digits(_literal(args[0])))
    if name == "Float" and len(args) == 1:
        return _budget(_float_digits(_literal(args[0])))
    if name == "Rational" and len(args) == 2:
        return _budget(sum(_integer_digits(_literal(a)) for a in args))
    if name == "Symbol" and len(args) == 1:
        symbol = _literal(args[0])
        if not isinstance(symbol, str) or not _SYMBOL_NAME.fullmatch(symbol) or "__" in symbol:
            raise _Refused(f"the symbol {symbol!r}")
        return float(SYMBOL_DIGITS)
    if not args:
        raise _Refused(f"{name}() without arguments")
    sizes = [_digits(a) for a in args]
    if name in _KEEP_SIZE:
        return _budget(sum(sizes))
    if name in _ROOTS:
        if sizes[0] > MAX_ROOT_DIGITS:
            raise _Refused(f"a root of a number of more than {MAX_ROOT_DIGITS} digits")
        return _budget(sum(sizes))
    if name == "exp":
        return _budget(max(sizes[0], 1.0) * _value_bound(sizes[0]))
    if name in _FACTORIALS:  # n! <= n^n: n log10(n) digits
        n = _value_bound(sizes[0])
        return _budget(n * math.log10(n + 1) + sum(sizes[1:]))
    raise _Refused(f"the function {name!r}")


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
    return deepest


@functools.lru_cache(maxsize=4096)
def _inspected(expr: str) -> tuple[Any, str | None]:
    """(the compiled code, None) when ``expr`` may be evaluated; (None, the reason) if not."""
    if len(expr) > MAX_CHARS:
        return None, f"longer than {MAX_CHARS} characters"
    if _nesting(expr) > MAX_NESTING:
        return None, f"brackets nested deeper than {MAX_NESTING}"
    try:
        code = spp.stringify_expr(expr, {}, _NAMESPACE, _TRANSFORMATIONS)
        tree = ast.parse(code.strip(), mode="eval")
    except Exception as error:  # tokenize and ast raise many kinds; none may escape
        return None, f"not an expression ({type(error).__name__})"
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        return None, f"more than {MAX_NODES} syntax-tree nodes"
    try:
        _digits(tree)
    except _Refused as refusal:
        return None, str(refusal)
    return compile(tree, "<answer>", "eval"), None


def refusal_reason(expr: str) -> str | None:
    """Why ``sympy_parser`` will not evaluate ``expr`` (a normalized answer), or None when it
    will: the text is too long or too deeply nested, is not an expression, contains anything but
    numbers, symbols, arithmetic and a list of known functions, or would compute a number of
    more than ``MAX_DIGITS`` digits (a root or logarithm of more than ``MAX_ROOT_DIGITS``)."""
    check_str("expr", expr, empty=True)
    return _inspected(expr)[1]


def sympy_parser(expr: str) -> Any:
    """``expr`` read by sympy as the sequel reads it (standard transformations plus implicit
    multiplication, evaluated: ``"2x + 3x"`` is ``5*x``), or None when it is not an expression
    or ``refusal_reason`` refuses it."""
    return _parsed(expr) if isinstance(expr, str) else None


@functools.lru_cache(maxsize=4096)
def _parsed(expr: str) -> Any:
    code, _ = _inspected(expr)
    if code is None:
        return None
    try:
        return eval(code, dict(_NAMESPACE), {})  # only the arithmetic the guard let through
    except Exception:
        return None


def equality_check(expr_gtruth: str, expr_pred: str) -> bool:
    """Whether two normalized answers are equal: the same text, or sympy expressions whose
    difference simplifies to 0."""
    if expr_gtruth == expr_pred:
        return True
    gtruth, pred = sympy_parser(expr_gtruth), sympy_parser(expr_pred)
    if gtruth is None or pred is None:
        return False
    try:
        return bool(simplify(gtruth - pred) == 0)
    except Exception:  # tuples, relations, sets: no difference to simplify
        return False


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
