"""One argument check for the whole package: the same mistake, the same error, everywhere.

Every public function and class checks its arguments with these helpers before doing any work.
The rules they hold to:

- a wrong *type* is a ``TypeError``, a wrong *value* a ``ValueError`` (``bool`` is never taken
  for a number: ``True`` is not a count);
- the message names the parameter and the allowed range, then what it got:
  ``"grad_clip must be a float > 0 or None, got -1.0"``;
- the error carries the parameter's name as data, ``error.parameter``, so the command line can
  name the flag (``--grad-clip``) without parsing the message. Both error classes derive from
  ``ArgumentError`` as well, so ``except ArgumentError`` catches either.

>>> check_int("batch_size", 8, low=1)
8
>>> check_float("lr", 0, low=0, low_open=True)
Traceback (most recent call last):
...
gpt_components.machinery.checks.ArgumentValueError: lr must be a float > 0, got 0
>>> try:
...     check_choice("attn_kernel", "spda", ("sdpa", "textbook"))
... except ArgumentError as error:
...     print(error.parameter, "|", error)
attn_kernel | attn_kernel must be one of ['sdpa', 'textbook'], got 'spda' (did you mean 'sdpa'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "value_error",
    "type_error",
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_str",
    "check_instance",
    "check_tensor",
    "check_token_ids",
    "did_you_mean",
    "renamed",
    "with_fields",
    "check_records",
]


class ArgumentError(Exception):
    """A bad argument; ``parameter`` names it (a function's parameter, a config field)."""

    parameter: str

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class ArgumentValueError(ArgumentError, ValueError):
    """The argument has the right type and a value outside what is allowed."""


class ArgumentTypeError(ArgumentError, TypeError):
    """The argument has the wrong type."""


def value_error(parameter: str, message: str) -> ArgumentValueError:
    """A ``ValueError`` for ``parameter`` (raise it): ``raise value_error("lr", "lr must ...")``."""
    return ArgumentValueError(parameter, message)


def type_error(parameter: str, message: str) -> ArgumentTypeError:
    """A ``TypeError`` for ``parameter`` (raise it)."""
    return ArgumentTypeError(parameter, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_text(kind: str, low: float | None, high: float | None, low_open: bool,
                high_open: bool) -> str:
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              optional: bool = False) -> Any:
    """``value`` if it is an int (not a bool) in ``[low, high]``; ``None`` too if ``optional``."""
    allowed = _range_text("an int", low, high, False, False) + (" or None" if optional else "")
    if value is None and optional:
        return None
    if not _is_int(value):
        raise type_error(name, f"{name} must be {allowed}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise value_error(name, f"{name} must be {allowed}, got {value!r}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False,
                optional: bool = False) -> Any:
    """``value`` as given if it is a finite real number (an int or a float, never a bool, NaN
    or an infinity) within the bounds; ``None`` too if ``optional``. Open bounds exclude
    their endpoint: ``low=0, low_open=True`` is ``> 0``."""
    allowed = _range_text("a float", low, high, low_open, high_open) + (
        " or None" if optional else "")
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(name, f"{name} must be {allowed}, got {value!r}")
    if not math.isfinite(value):
        raise value_error(name, f"{name} must be {allowed} (finite), got {value!r}")
    if (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high)):
        raise value_error(name, f"{name} must be {allowed}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise type_error(name, f"{name} must be True or False, got {value!r}")
    return value


def did_you_mean(value: Any, choices: Iterable[Any], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest choice to a misspelt string, else ``""``
    (``difflib``'s similarity of at least ``cutoff``, in [0, 1])."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``; otherwise a ``ValueError`` listing them, with the
    closest one suggested (a ``TypeError`` when ``value`` is not even hashable)."""
    try:
        known = value in choices
    except TypeError:
        raise type_error(name, f"{name} must be one of {sorted(choices, key=str)}, got "
                               f"{value!r}") from None
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        known = False  # True == 1: a bool is never taken for a numeric choice
    if not known:
        listed = sorted(choices, key=str)
        raise value_error(name, f"{name} must be one of {listed}, got {value!r}"
                                f"{did_you_mean(value, listed)}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False, optional: bool = False) -> Any:
    """``value`` if it is a ``str`` (non-empty unless ``empty``); ``None`` too if ``optional``."""
    if value is None and optional:
        return None
    what = "a str" if empty else "a non-empty str"
    if optional:
        what += " or None"
    if not isinstance(value, str):
        raise type_error(name, f"{name} must be {what}, got {type(value).__name__}")
    if not value and not empty:
        raise value_error(name, f"{name} must be {what}, got ''")
    return value


def check_instance(name: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is an instance of ``types``; ``what`` says it in words (``"a GPTModel"``)."""
    if not isinstance(value, types):
        raise type_error(name, f"{name} must be {what}, got {type(value).__name__}")
    return value


_KINDS = {
    "integer": lambda d: not d.is_floating_point and not d.is_complex and d != torch.bool,
    "floating": lambda d: d.is_floating_point,
    "bool": lambda d: d == torch.bool,
}


def check_tensor(name: str, value: Any, *, dims: int | Collection[int] | None = None,
                 kind: str | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` if it is a tensor with ``dims`` dimensions (an int or a set), holding the
    ``kind`` of numbers asked (``"integer"``, ``"floating"``, ``"bool"``), of ``dtype`` and on
    ``device`` when given. Wrong type or element kind: ``TypeError``; wrong shape, dtype or
    device: ``ValueError``."""
    if not isinstance(value, torch.Tensor):
        raise type_error(name, f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if kind is not None and not _KINDS[kind](value.dtype):
        raise type_error(name, f"{name} must hold {kind} numbers, got dtype {value.dtype}")
    if dims is not None:
        allowed = (dims,) if isinstance(dims, int) else tuple(sorted(dims))
        if value.dim() not in allowed:
            wanted = " or ".join(f"{d}-D" for d in allowed)
            raise value_error(name, f"{name} must be {wanted}, got shape {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        raise value_error(name, f"{name} must have dtype {dtype}, got {value.dtype}")
    if device is not None and value.device != device:
        raise value_error(name, f"{name} is on device {value.device}, but the model is on "
                                f"{device}: move it with .to({str(device)!r})")
    return value


def check_token_ids(idx: Any, vocab_size: int, name: str = "idx",
                    device: torch.device | None = None) -> torch.Tensor:
    """``idx`` if it is a 2-D [batch, tokens] integer tensor (on ``device`` when given) of at
    least one row and one token, every id in ``[0, vocab_size)``."""
    check_tensor(name, idx, kind="integer")
    if idx.dim() != 2:
        raise value_error(name, f"{name} must be 2-D [batch, tokens], got shape "
                                f"{tuple(idx.shape)}")
    if idx.shape[0] < 1 or idx.shape[1] < 1:
        raise value_error(name, f"{name} must hold at least one row and one token per row, got "
                                f"shape {tuple(idx.shape)}")
    if device is not None:
        check_tensor(name, idx, device=device)
    if torch.compiler.is_compiling():
        return idx  # reading values would break the graph; eager calls check them
    low, high = torch.stack(torch.aminmax(idx)).tolist()  # one device-to-host copy, not two
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise value_error(name, f"{name} holds token id {bad}, outside [0, vocab_size="
                                f"{vocab_size})")
    return idx


# -- added by the CLI helper (issue 18): one parameter seen under another name -----------------

def renamed(error: ArgumentError, parameter: str, word: str | None = None) -> ArgumentError:
    """``error`` as an error of ``parameter``, the same class: a caller that took the value as
    its own ``parameter`` re-raises what the function it passed it to said about it. A message
    that opens with the inner name opens with ``word`` (default: ``parameter``) instead:
    ``renamed(name_or_path_error, "source")`` reads ``source 'gpt2' is not ...``; any other
    message is prefixed with ``word:``."""
    message, word = str(error), word or parameter
    for end in (" ", ":"):
        if message.startswith(error.parameter + end):
            return type(error)(parameter, word + message[len(error.parameter):])
    return type(error)(parameter, f"{word}: {message}")


def with_fields(config: Any, overrides: Mapping[str, Any], parameter: str = "overrides") -> Any:
    """The dataclass ``config`` with ``overrides`` replacing its fields (a preset with a few
    fields changed); a name that is not a field is a ``TypeError`` naming ``parameter``, the
    closest field suggested."""
    fields = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise type_error(parameter, f"{parameter} must be {type(config).__name__} fields "
                                    f"{sorted(fields)}, got {unknown}"
                                    f"{did_you_mean(unknown[0], fields, cutoff=0.8)}")
    return dataclasses.replace(config, **overrides)


def check_records(name: str, data: Any, check_entry: Callable[[Any, str, str], Any], what: str,
                  *, empty: bool = False) -> list:
    """``data`` as a list: a sequence (not a str or a dict) of ``what`` (non-empty unless
    ``empty``), each entry passed to ``check_entry(entry, "data[i]", name)``."""
    if isinstance(data, (str, Mapping)) or not isinstance(data, Sequence):
        raise type_error(name, f"{name} must be a sequence of {what}, got {type(data).__name__}")
    if not data and not empty:
        raise value_error(name, f"{name} must hold at least one record, got an empty sequence")
    for i, entry in enumerate(data):
        check_entry(entry, f"{name}[{i}]", name)
    return list(data)
