"""MATH-500, bundled (the sequel's chapter 3): 500 competition problems with their answers.

The test subset of Hendrycks et al.'s MATH that OpenAI's "Let's Verify Step by Step" chose:
each record holds ``problem``, ``solution``, ``answer`` (LaTeX, as a textbook writes it),
``subject`` (seven of them), ``level`` (1 to 5) and ``unique_id``. The file ships inside the
package (``assets/math500_test.json``, its origin and MIT licence in ``assets/README.md``), so
nothing is downloaded.

- ``load_math500_test(local_path=None, save_copy=True)``: the sequel's loader: ``local_path``
  when that file exists, else the bundled copy (the sequel downloads it), written to
  ``local_path`` when ``save_copy``.
- ``load_math_problems(dataset="math500")``: what ``gpt-components evaluate-math`` grades: the
  bundled set by name, or a JSON list / JSON-lines file of records in the same shape.
- ``check_problems(name, data)``: such records, refused with a ValueError naming ``name``
  when one lacks a ``problem`` or an ``answer`` text.
- ``problem_id(record, index)``: a record's ``unique_id``, else its place in the file.

>>> problems = load_math500_test()
>>> len(problems), sorted(problems[0])
(500, ['answer', 'level', 'problem', 'solution', 'subject', 'unique_id'])
>>> problems[0]["answer"], problems[0]["subject"], problems[0]["level"]
('\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)', 'Precalculus', 2)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..machinery.atomic import write_bytes_atomically
from ..machinery.checks import (
    check_bool,
    check_records,
    check_str,
    did_you_mean,
    type_error,
    value_error,
)
from ..machinery.resources import resource_path

__all__ = ["load_math500_test", "load_math_problems", "check_problems", "problem_id",
           "MATH_DATASETS"]

#: The datasets bundled with the package, by the name ``load_math_problems`` takes.
MATH_DATASETS = {"math500": "math500_test.json"}


def _check_problem(record: Any, where: str, name: str) -> None:
    if not isinstance(record, dict):
        raise value_error(name, f"{name}: {where} must be a record (a JSON object) with "
                                f"'problem' and 'answer', got {type(record).__name__}")
    for key in ("problem", "answer"):
        if not isinstance(record.get(key), str):
            raise value_error(name, f"{name}: {where} must have a text {key!r}, got "
                                    f"{record.get(key)!r}"[:300])
    level = record.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, str))):
        raise value_error(name, f"{name}: {where}'s 'level' must be an int or a text, got "
                                f"{level!r}")


def check_problems(name: str, data: Any) -> list[dict]:
    """``data`` as a list of problem records: each a dict with the texts ``problem`` and
    ``answer`` (``subject``, ``level``, ``unique_id`` and ``solution`` optional). Anything else
    is a ValueError naming ``name`` and the first bad record."""
    if isinstance(data, (str, dict)) or not isinstance(data, list):
        raise value_error(name, f"{name} must hold a list of problem records, got "
                                f"{type(data).__name__}")
    return check_records(name, data, _check_problem, "problem records")


def _read_records(path: Path, name: str) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise value_error(name, f"{name}: {str(path)!r} is not UTF-8 text: {error}") from None
    except OSError as error:
        raise value_error(name, f"{name}: {str(path)!r} cannot be read: "
                                f"{error.strerror or error}") from None
    try:
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as error:
        raise value_error(name, f"{name}: {str(path)!r} is not valid JSON: {error}") from None
    return check_problems(name, data)


def load_math500_test(local_path: str | os.PathLike[str] | None = None,
                      save_copy: bool = True) -> list[dict]:
    """MATH-500's 500 records, as the sequel's ``load_math500_test`` returns them.

    ``local_path`` names a copy to read when it exists (checked: a list of records with
    ``problem`` and ``answer``). Otherwise the bundled file is read (where the sequel downloads
    it) and, when ``local_path`` is given and ``save_copy`` is true, written there atomically.
    """
    check_bool("save_copy", save_copy)
    if local_path is not None:
        if not isinstance(local_path, (str, os.PathLike)):
            raise type_error("local_path", f"local_path must be a path or None, got "
                                           f"{type(local_path).__name__}")
        path = Path(local_path)
        if path.exists():
            return _read_records(path, "local_path")
    bundled = resource_path(MATH_DATASETS["math500"])
    if local_path is not None and save_copy:
        write_bytes_atomically(path, bundled.read_bytes())
    return _read_records(bundled, "local_path")


def load_math_problems(dataset: str = "math500") -> list[dict]:
    """The problems of ``dataset``: a bundled set by name (``MATH_DATASETS``: ``"math500"``) or a
    ``.json`` file holding a list of records / a ``.jsonl`` file of one record a line, each
    with ``problem`` and ``answer`` texts. Anything else is a ValueError naming ``dataset``."""
    check_str("dataset", dataset)
    if dataset in MATH_DATASETS:
        return _read_records(resource_path(MATH_DATASETS[dataset]), "dataset")
    path = Path(dataset)
    if not path.is_file():
        raise value_error("dataset", f"dataset must be one of {sorted(MATH_DATASETS)} or a "
                                     f".json / .jsonl file of problem records, got {dataset!r}"
                                     f"{did_you_mean(dataset, MATH_DATASETS)}")
    return _read_records(path, "dataset")


def problem_id(record: dict, index: int) -> str:
    """The id a record is known by in an evaluation's output: its ``unique_id`` when it has a
    text one, else ``"#<index>"`` (its place in the file, from 0)."""
    unique = record.get("unique_id")
    return unique if isinstance(unique, str) and unique else f"#{index}"
