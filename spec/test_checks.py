"""Spec for gpt_components.machinery.checks: the one argument check every module uses.

Reference: plain Python predicates written out here (``isinstance``, comparisons,
``math.isfinite``, ``difflib.get_close_matches``, torch's dtype flags), never the helpers
themselves. For every drawn value each helper must accept exactly what its predicate accepts,
return the value unchanged, and otherwise raise a ``TypeError`` for a wrong type or a
``ValueError`` for a wrong value, carrying the parameter's name as ``error.parameter`` and
naming the parameter and the allowed range in its message.
"""

from __future__ import annotations

import difflib
import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from gpt_components.machinery.checks import (
    ArgumentError,
    ArgumentTypeError,
    ArgumentValueError,
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_str,
    check_tensor,
    check_token_ids,
    did_you_mean,
    type_error,
    value_error,
)

pytestmark = pytest.mark.machinery

names = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.integers(), max_size=2), st.just(torch.tensor(1)),
)

bounds = st.one_of(st.none(), st.integers(-5, 5))
float_bounds = st.one_of(st.none(), st.floats(-5, 5, allow_nan=False))


def _refused(call, name: str) -> ArgumentError:
    """The error ``call`` raises; it must be one of ours, naming ``name`` as data and text."""
    with pytest.raises(ArgumentError) as caught:
        call()
    error = caught.value
    assert isinstance(error, (ArgumentTypeError, ArgumentValueError))
    assert error.parameter == name
    assert str(error).startswith(f"{name} ")  # the message opens with the name
    return error


# -- check_int ----------------------------------------------------------------------------------


@given(names, anything, bounds, bounds, st.booleans())
@example("n", True, None, None, False).via("a bool is never an int")
@example("n", None, 1, None, True).via("None is allowed only when optional")
def test_check_int_accepts_exactly_ints_in_range(name, value, low, high, optional):
    is_int = isinstance(value, int) and not isinstance(value, bool)
    in_range = is_int and (low is None or value >= low) and (high is None or value <= high)
    if (value is None and optional) or in_range:
        assert check_int(name, value, low=low, high=high, optional=optional) is value
        return
    error = _refused(lambda: check_int(name, value, low=low, high=high, optional=optional), name)
    assert isinstance(error, TypeError if not is_int else ValueError)
    assert "an int" in str(error) and str(error).endswith(f"got {value!r}")
    for bound in (low, high):
        if bound is not None:
            assert str(bound) in str(error)
    assert ("or None" in str(error)) == optional


@given(names, st.booleans())
def test_a_bool_never_passes_as_an_int_whatever_the_range(name, flag):
    error = _refused(lambda: check_int(name, flag, low=0, high=1), name)
    assert isinstance(error, TypeError)


# -- check_float --------------------------------------------------------------------------------


@given(names, anything, float_bounds, float_bounds, st.booleans(), st.booleans(), st.booleans())
@example("lr", math.nan, None, None, False, False, False).via("NaN is refused")
@example("eps", math.inf, 0.0, None, True, False, False).via("inf is refused")
@example("eps", -math.inf, None, None, False, False, False).via("-inf is refused")
@example("beta", 0.0, 0.0, None, True, False, False).via("an open bound excludes its endpoint")
@example("p", 1, 0.0, 1.0, False, False, False).via("an int is a real number")
def test_check_float_accepts_exactly_finite_reals_in_range(name, value, low, high, low_open,
                                                           high_open, optional):
    is_real = isinstance(value, (int, float)) and not isinstance(value, bool)
    finite = is_real and math.isfinite(value)
    above = low is None or (value > low if low_open else value >= low) if finite else False
    below = high is None or (value < high if high_open else value <= high) if finite else False
    kwargs = dict(low=low, high=high, low_open=low_open, high_open=high_open, optional=optional)
    if (value is None and optional) or (finite and above and below):
        assert check_float(name, value, **kwargs) is value
        return
    error = _refused(lambda: check_float(name, value, **kwargs), name)
    assert isinstance(error, TypeError if not is_real else ValueError)
    assert "a float" in str(error) and str(error).endswith(f"got {value!r}")
    if low is not None:
        assert f"{'>' if low_open else '>='} {low}" in str(error) or f"{low}," in str(error)
    if is_real and not finite:
        assert "finite" in str(error)


# -- check_bool, check_str, check_instance ------------------------------------------------------


@given(names, anything)
def test_check_bool_accepts_only_true_and_false(name, value):
    if value is True or value is False:
        assert check_bool(name, value) is value
        return
    error = _refused(lambda: check_bool(name, value), name)
    assert isinstance(error, TypeError) and "True or False" in str(error)


@given(names, anything, st.booleans(), st.booleans())
def test_check_str_accepts_strings_and_empty_ones_only_when_asked(name, value, empty, optional):
    if (value is None and optional) or (isinstance(value, str) and (value or empty)):
        assert check_str(name, value, empty=empty, optional=optional) is value
        return
    error = _refused(lambda: check_str(name, value, empty=empty, optional=optional), name)
    assert isinstance(error, ValueError if isinstance(value, str) else TypeError)
    assert "str" in str(error)


@given(names, anything, st.sampled_from([(int, "an int"), ((str, list), "a str or a list"),
                                         (torch.Tensor, "a tensor")]))
def test_check_instance_is_isinstance(name, value, kind):
    types, what = kind
    if isinstance(value, types):
        assert check_instance(name, value, types, what) is value
        return
    error = _refused(lambda: check_instance(name, value, types, what), name)
    assert isinstance(error, TypeError)
    assert what in str(error) and type(value).__name__ in str(error)


# -- check_choice and did_you_mean --------------------------------------------------------------

words = st.text("abcdefgh_", min_size=1, max_size=8)


@given(names, st.one_of(words, st.integers(0, 3), st.booleans(), st.lists(words, max_size=1)),
       st.sets(st.one_of(words, st.integers(0, 3)), min_size=1, max_size=5))
@example("attn_kernel", "spda", {"sdpa", "textbook"}).via("a misspelling is suggested")
@example("n", True, {1, 2}).via("True is not the choice 1")
@example("n", ["sdpa"], {"sdpa"}).via("an unhashable value is a TypeError")
def test_check_choice_accepts_members_and_suggests_the_closest(name, value, choices):
    try:
        member = value in choices and not (isinstance(value, bool) and not any(
            isinstance(c, bool) for c in choices))
    except TypeError:  # unhashable
        error = _refused(lambda: check_choice(name, value, choices), name)
        assert isinstance(error, TypeError)
        return
    if member:
        assert check_choice(name, value, choices) is value
        return
    error = _refused(lambda: check_choice(name, value, choices), name)
    assert isinstance(error, ValueError)
    assert str(error).startswith(f"{name} must be one of {sorted(choices, key=str)}, got "
                                 f"{value!r}")
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1) \
        if isinstance(value, str) else []
    assert ("did you mean" in str(error)) == bool(close)
    if close:
        assert str(error).endswith(f"(did you mean {close[0]!r}?)")


@given(st.one_of(words, st.integers()), st.lists(words, max_size=5))
def test_did_you_mean_is_difflibs_closest_match(value, choices):
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6) \
        if isinstance(value, str) else []
    assert did_you_mean(value, choices) == (f" (did you mean {close[0]!r}?)" if close else "")


# -- check_tensor and check_token_ids -----------------------------------------------------------

dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32,
                          torch.uint8, torch.bool, torch.complex64])
KINDS = {  # written out from the dtype flags, not taken from the module
    "floating": lambda d: d in (torch.float32, torch.float64, torch.bfloat16),
    "integer": lambda d: d in (torch.int64, torch.int32, torch.uint8),
    "bool": lambda d: d is torch.bool,
}


@given(names, dtypes, st.lists(st.integers(1, 3), max_size=3),
       st.one_of(st.none(), st.sampled_from(sorted(KINDS))),
       st.one_of(st.none(), st.integers(0, 3), st.sets(st.integers(0, 3), min_size=1)))
def test_check_tensor_checks_kind_then_dimensions(name, dtype, shape, kind, dims):
    value = torch.zeros(shape, dtype=dtype)
    kind_ok = kind is None or KINDS[kind](dtype)
    allowed = None if dims is None else ({dims} if isinstance(dims, int) else dims)
    dims_ok = allowed is None or len(shape) in allowed
    if kind_ok and dims_ok:
        assert check_tensor(name, value, kind=kind, dims=dims) is value
        return
    error = _refused(lambda: check_tensor(name, value, kind=kind, dims=dims), name)
    assert isinstance(error, TypeError if not kind_ok else ValueError)
    assert (kind in str(error)) if not kind_ok else (str(tuple(shape)) in str(error))


@given(names, anything)
def test_check_tensor_refuses_what_is_not_a_tensor(name, value):
    if isinstance(value, torch.Tensor):
        return
    error = _refused(lambda: check_tensor(name, value), name)
    assert isinstance(error, TypeError) and "torch.Tensor" in str(error)


@given(st.lists(st.lists(st.integers(-3, 12), min_size=1, max_size=4), min_size=1, max_size=3),
       st.integers(1, 10))
def test_check_token_ids_accepts_exactly_ids_below_the_vocabulary(rows, vocab_size):
    width = len(rows[0])
    idx = torch.tensor([(row * width)[:width] for row in rows])
    if all(0 <= i < vocab_size for row in idx.tolist() for i in row):
        assert check_token_ids(idx, vocab_size) is idx
        return
    error = _refused(lambda: check_token_ids(idx, vocab_size), "idx")
    assert isinstance(error, ValueError) and f"vocab_size={vocab_size}" in str(error)


@pytest.mark.parametrize("idx, error", [
    (torch.zeros(1, 2), TypeError), (torch.zeros(2, dtype=torch.long), ValueError),
    (torch.zeros(1, 0, dtype=torch.long), ValueError), ([[1]], TypeError),
])
def test_check_token_ids_wants_a_non_empty_2d_integer_tensor(idx, error):
    caught = _refused(lambda: check_token_ids(idx, 5, name="labels"), "labels")
    assert isinstance(caught, error)


# -- the errors themselves ------------------------------------------------------------------------


@given(names, st.text(max_size=20))
def test_errors_are_the_builtin_classes_carrying_the_parameter(name, message):
    for make, builtin in ((value_error, ValueError), (type_error, TypeError)):
        error = make(name, message)
        assert isinstance(error, builtin) and isinstance(error, ArgumentError)
        assert error.parameter == name and str(error) == message
        assert not isinstance(error, ValueError if builtin is TypeError else TypeError)
