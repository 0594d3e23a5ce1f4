"""What the verifier lets sympy evaluate: a guard between a model's text and ``parse_expr``.

sympy evaluates while it parses, and a model's answer is untrusted text. ``10^{10^{10}}`` asks
for a number of ten billion digits, ``(10^{10})!`` for a factorial no machine holds,
``1e999999`` hangs sympy's ``Float``, ``\\sqrt{10^{999}+7}`` sends it factoring a 1000-digit
number, brackets thousands deep exhaust Python's parser, and ``x.__class__`` is an attribute
access that ``parse_expr`` would run. No timeout is needed, nor a thread left running: the
guard decides before anything is evaluated.

How: sympy's own token transformations (the sequel's: the standard ones plus implicit
multiplication) turn the text into Python code without evaluating it; the guard reads that code
as a syntax tree and walks it. Every node must be arithmetic it knows (numbers, symbols,
``+ - * / **``, comparisons, tuples, a list of functions); for each it keeps an upper bound on
the digits of any number evaluating it would compute, and on the logarithm of its value (an
exponent's size decides a power's): ``a**b`` has at most ``digits(a) * |b|`` digits,
``n!`` at most ``n log10 n``. Only code whose bounds stay within ``MAX_DIGITS`` is compiled; a
symbol counts as a number of ``SYMBOL_DIGITS`` digits (``(x+1)**100`` expands like
``(10**10)**100``), so symbolic work is bounded the same way.

- ``guarded_code(expr)`` -> ``(code, None)`` or ``(None, reason)``.
- ``refusal_reason(expr)``: the reason alone (``None``: it will be evaluated).
- ``guarded_eval(expr)``: the sympy value, or None when refused or not an expression.

>>> refusal_reason("(10)**(10**10)")
'a number of more than 2000 digits (10^{10^{11}} digits at most)'
>>> refusal_reason("x.__class__"), refusal_reason("2**100 + sqrt(8)")
('Python syntax Attribute', None)
>>> guarded_eval("2**100 + sqrt(8)")
2*sqrt(2) + 1267650600228229401496703205376
"""

from __future__ import annotations

import ast
import functools
import math
import re
from typing import Any, NamedTuple

from sympy.parsing import sympy_parser as spp

from ..machinery.checks import check_str

__all__ = ["refusal_reason", "guarded_code", "guarded_eval"]

MAX_CHARS = 400  # a normalized answer longer than this is compared as text only
MAX_NESTING = 40  # brackets deeper than this are refused (Python's parser gives up near 200)
MAX_NODES = 150  # syntax-tree nodes (the longest bundled answer has 95): simplify grows fast
MAX_DIGITS = 2000  # an exact number this long costs microseconds
MAX_ROOT_DIGITS = 200  # sympy factors a number to take its root or log: 1000 digits take seconds
SYMBOL_DIGITS = 10  # a symbol counts as a 10-digit number

_TRANSFORMATIONS = (*spp.standard_transformations, spp.implicit_multiplication_application)
_NAMESPACE: dict[str, Any] = {}
exec("from sympy import *", _NAMESPACE)  # the names parse_expr resolves against, as it does
_NAMESPACE["__builtins__"] = {}  # code that passes the guard calls no builtin

_CONSTANTS = {"pi", "E", "I", "oo", "zoo", "nan"}
_SAME_SIZE = {"sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "sinh",
              "cosh", "tanh", "Abs", "sign", "floor", "ceiling", "re", "im", "arg", "conjugate",
              "Max", "Min", "gcd", "lcm"}
_ROOTS = {"sqrt", "cbrt", "root", "log", "ln"}  # sympy factors the argument
_FACTORIALS = {"factorial", "factorial2", "gamma", "subfactorial", "binomial"}
_FLOAT = re.compile(r"(\d*)\.?(\d*)(?:[eE]([+-]?\d+))?")
_SYMBOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class _Refused(Exception):
    """The guard's verdict on a node, with the reason."""


class _Size(NamedTuple):
    """Upper bounds for a node: the digits of any number computing it makes (numerator and
    denominator together), and log10 of its absolute value."""

    digits: float
    log10: float


def _within(digits: float, log10: float) -> _Size:
    if not digits <= MAX_DIGITS:  # also catches inf and NaN from an overflowing bound
        huge = f" (10^{{10^{{{math.log10(digits):.0f}}}}} digits at most)" if (
            math.isfinite(digits) and digits > 1e6) else ""
        raise _Refused(f"a number of more than {MAX_DIGITS} digits{huge}")
    return _Size(digits, max(log10, 0.0))


def _power_of_ten(log10: float) -> float:
    return 10.0 ** log10 if log10 < 300 else math.inf


def _literal(node: ast.AST) -> Any:
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        raise _Refused("a bare Python literal")
    return node.value


def _integer(node: ast.AST) -> _Size:
    value = _literal(node)
    if not isinstance(value, int):
        raise _Refused(f"Integer of {type(value).__name__}")
    digits = math.log10(abs(value) + 1)
    return _within(digits, digits)


def _float(node: ast.AST) -> _Size:
    value = _literal(node)
    match = _FLOAT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _Refused(f"Float of {value!r}")
    whole, fraction, exponent = match.groups()
    if len(exponent or "") > 6:  # beyond any budget; int() of it is not needed
        raise _Refused(f"a number of more than {MAX_DIGITS} digits")
    shift = int(exponent or 0)
    return _within(len(whole) + len(fraction) + abs(shift), len(whole) + max(shift, 0))


def _size(node: ast.AST) -> _Size:
    """The bounds of ``node``; _Refused when it is not known arithmetic or exceeds the budget."""
    if isinstance(node, ast.Expression):
        return _size(node.body)
    if isinstance(node, ast.Name):
        if node.id not in _CONSTANTS:
            raise _Refused(f"the name {node.id!r}")
        return _Size(1.0, 1.0)  # |pi|, |E|, |I| < 10; oo, zoo and nan are no numbers to compute
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _size(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)) or (isinstance(node, ast.Compare) and all(
            isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops)):
        items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else [
            node.left, *node.comparators]
        sizes = [_size(item) for item in items]
        return _within(sum(s.digits for s in sizes), max((s.log10 for s in sizes), default=0))
    if isinstance(node, ast.BinOp):
        return _binary(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return _call(node.func.id, node.args)
    raise _Refused(f"Python syntax {type(node).__name__}")


def _is_integer_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
        node.func.id == "Integer")


def _binary(node: ast.BinOp) -> _Size:
    a, b = _size(node.left), _size(node.right)
    if isinstance(node.op, (ast.Add, ast.Sub)):  # p/q + r/s = (ps + rq) / qs
        return _within(a.digits + b.digits + 1, max(a.log10, b.log10) + math.log10(2))
    if isinstance(node.op, ast.Mult):
        return _within(a.digits + b.digits, a.log10 + b.log10)
    if isinstance(node.op, ast.Div):  # |1/b| is at most b's denominator
        return _within(a.digits + b.digits, a.log10 + b.digits)
    if isinstance(node.op, ast.Pow):
        if not _is_integer_literal(node.right) and a.digits > MAX_ROOT_DIGITS:
            raise _Refused(f"a root of a number of more than {MAX_ROOT_DIGITS} digits")
        exponent = _power_of_ten(b.log10)  # |b|; a negative one inverts a: its digits count
        return _within(a.digits * exponent, max(a.log10, a.digits) * exponent)
    raise _Refused(f"the operator {type(node.op).__name__}")


def _call(name: str, args: list[ast.expr]) -> _Size:
    if name == "Integer" and len(args) == 1:
        return _integer(args[0])
    if name == "Float" and len(args) == 1:
        return _float(args[0])
    if name == "Rational" and len(args) == 2:
        p, q = _integer(args[0]), _integer(args[1])
        return _within(p.digits + q.digits, p.digits + q.digits)
    if name == "Symbol" and len(args) == 1:
        symbol = _literal(args[0])
        if not isinstance(symbol, str) or not _SYMBOL_NAME.fullmatch(symbol) or "__" in symbol:
            raise _Refused(f"the symbol {symbol!r}")
        return _Size(float(SYMBOL_DIGITS), float(SYMBOL_DIGITS))
    if name not in _SAME_SIZE | _ROOTS | _FACTORIALS | {"exp"}:
        raise _Refused(f"the function {name!r}")
    if not args:
        raise _Refused(f"{name}() without arguments")
    sizes = [_size(arg) for arg in args]
    digits, log10 = sum(s.digits for s in sizes), sum(s.log10 for s in sizes)
    if name in _ROOTS and sizes[0].digits > MAX_ROOT_DIGITS:
        raise _Refused(f"a root of a number of more than {MAX_ROOT_DIGITS} digits")
    if name == "exp":  # E**a: kept as a power, but exp(log(n)) is n
        return _within(digits, math.log10(math.e) * _power_of_ten(log10))
    if name in _FACTORIALS:  # n! <= n**n
        n = _power_of_ten(sizes[0].log10)
        bound = n * math.log10(n + 1) + digits if math.isfinite(n) else math.inf
        return _within(bound, bound)
    return _within(digits, log10)


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
def guarded_code(expr: str) -> tuple[Any, str | None]:
    """``(code, None)``: ``expr`` compiled as sympy's parser would run it, safe to evaluate; or
    ``(None, reason)`` when the guard refuses it."""
    check_str("expr", expr, empty=True)
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
        _size(tree)
    except _Refused as refusal:
        return None, str(refusal)
    return compile(tree, "<answer>", "eval"), None


def refusal_reason(expr: str) -> str | None:
    """Why the verifier will not evaluate ``expr`` (a normalized answer), or None when it will:
    too long or too deeply nested, not an expression, anything but numbers, symbols, arithmetic
    and known functions, or a number of more than ``MAX_DIGITS`` digits on the way (a root or
    logarithm of more than ``MAX_ROOT_DIGITS``)."""
    return guarded_code(expr)[1]


@functools.lru_cache(maxsize=4096)
def guarded_eval(expr: str) -> Any:
    """``expr`` evaluated as sympy's ``parse_expr`` evaluates it, when the guard allows; None when
    it refuses or evaluating fails."""
    code, _ = guarded_code(expr)
    if code is None:
        return None
    try:
        return eval(code, dict(_NAMESPACE), {})  # only the arithmetic the guard let through
    except Exception:
        return None
