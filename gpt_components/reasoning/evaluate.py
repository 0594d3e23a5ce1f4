"""Evaluating a model on MATH-500 (the sequel's chapter 3), and pass@k (Chen et al., 2021).

For each problem: the sequel's prompt (``render_prompt``; with ``chat=True`` as a user message
in the chat format of the model's tokenizer), ``samples`` answers generated in one batch, the
final answer of each extracted (``extract_final_candidate``) and graded against the reference
(``grade_answer``). With ``vote`` the most frequent extracted answer is graded (self-consistency;
a tie between the most frequent is no answer, as in the sequel); without it the first sample's.

Every problem's record is appended to a JSON-lines file and flushed to the disk (``fsync``)
before the next problem begins, so a kill loses at most the problem being worked on, and a
second run with the same file skips what it holds. The file opens with a line of settings;
a file written with other settings (or that is no such file) is refused, never mixed into.

- ``evaluate_math(model, tokenizer, problems, out, ...)`` -> the summary of every record for
  ``problems`` in ``out`` (``summarize_math``).
- ``read_math_records(out)``: the settings line and the records of such a file.
- ``summarize_math(records, samples)``: accuracy overall, by subject and by level, and pass@k.
- ``format_math_summary(summary)``: that summary as the lines the command line prints.
- ``pass_at_k(n, c, k)``: the chance that at least one of ``k`` answers drawn without
  replacement from ``n``, ``c`` of them correct, is correct: ``1 - C(n-c, k) / C(n, k)``.

>>> [round(pass_at_k(n=10, c=3, k=k), 4) for k in (1, 2, 5)], pass_at_k(n=10, c=8, k=3)
([0.3, 0.5333, 0.9167], 1.0)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..generation import check_sampling, generate_stream
from ..machinery.checks import (
    check_bool,
    check_instance,
    check_int,
    check_str,
    type_error,
    value_error,
)
from ..modern.chat import chat_format_for
from .math500 import check_problems, problem_id
from .verifier import extract_final_candidate, grade_answer, render_prompt

__all__ = ["pass_at_k", "evaluate_math", "read_math_records", "summarize_math",
           "format_math_summary"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate of Chen et al. (2021) for ``c`` correct of ``n`` samples.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, their numerically stable product form
    (the binomials themselves overflow a float past a thousand samples).
    """
    check_int("n", n, low=1)
    check_int("c", c, low=0, high=n)
    check_int("k", k, low=1, high=n)
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def _majority(answers: Sequence[str]) -> str | None:
    """The most frequent answer; None on a tie between the most frequent (the sequel's rule)."""
    ranked = Counter(answers).most_common()
    if not ranked or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return None
    return ranked[0][0]


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` as ordinary text: a special token's name in a problem is read as text."""
    try:
        return tokenizer.encode(text, disallowed_special=())
    except TypeError:  # a tokenizer without tiktoken's keyword
        return tokenizer.encode(text)


def _prompt_and_stops(tokenizer: Any, problem: str, chat: bool) -> tuple[list[int], set[int]]:
    """The ids a problem's answer continues, and the ids that end an answer."""
    stops = set()
    try:
        stops.add(int(tokenizer.eot_token))
    except (AttributeError, TypeError, ValueError):
        pass  # a tokenizer without an end-of-text token: answers run to max_new_tokens
    if not chat:
        return _encode(tokenizer, render_prompt(problem)), stops
    form = chat_format_for(tokenizer)
    ids = form.encode(tokenizer, [{"role": "user", "content": render_prompt(problem)}])
    return ids, stops | set(form.stop_ids(tokenizer))


def _sample(model: nn.Module, tokenizer: Any, prompt: list[int], stops: set[int], samples: int,
            temperature: float, top_p: float | None, max_new_tokens: int,
            generator: torch.Generator | None, device: torch.device) -> list[str]:
    """``samples`` answers to one prompt, generated as one batch; each ends before a stop id."""
    idx = torch.tensor([prompt] * samples, device=device)  # (samples, prompt tokens)
    answers: list[list[int]] = [[] for _ in range(samples)]
    done = [False] * samples
    for step in generate_stream(model, idx, max_new_tokens, temperature=temperature,
                                top_p=top_p, generator=generator):
        for row, token in enumerate(step[:, 0].tolist()):
            if not done[row]:
                done[row] = token in stops
                if not done[row]:
                    answers[row].append(token)
        if all(done):
            break
    return [tokenizer.decode(ids) for ids in answers]


def read_math_records(out: str | os.PathLike[str]) -> tuple[dict | None, list[dict]]:
    """``(settings, records)`` of an evaluation file; ``(None, [])`` when it does not exist or is
    empty. A torn last line (a kill while it was written) is ignored; a file that is not an
    evaluation's is a ValueError naming ``out``."""
    path = Path(out)
    if not path.exists():
        return None, []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as error:
        raise value_error("out", f"out: {str(path)!r} cannot be read: "
                                 f"{error.strerror or error}") from None
    complete = lines[:-1]  # what follows the last newline was never finished
    if not complete:
        return None, []
    try:
        rows = [json.loads(line) for line in complete]
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise value_error("out", f"out: {str(path)!r} is not an evaluate-math file (a line is "
                                 f"not JSON): give a new file or that evaluation's") from None
    if not isinstance(rows[0], dict) or "evaluate_math" not in rows[0] or not all(
            isinstance(row, dict) and isinstance(row.get("id"), str) for row in rows[1:]):
        raise value_error("out", f"out: {str(path)!r} is not an evaluate-math file (it must "
                                 f"open with its settings, then one record a line): give a new "
                                 f"file or that evaluation's")
    return rows[0]["evaluate_math"], rows[1:]


def _open_for_append(path: Path, settings: dict) -> tuple[Any, dict[str, dict]]:
    """The file opened to append records, after checking its settings; the records it holds."""
    held, records = read_math_records(path)
    if held is not None and held != settings:
        changed = sorted(k for k in settings.keys() | held.keys()
                         if settings.get(k) != held.get(k))
        raise value_error("out", f"out: {str(path)!r} holds an evaluation with other settings "
                                 f"({', '.join(f'{k}={held.get(k)!r}' for k in changed)}): "
                                 f"give a new file, or the same settings to resume it")
    if held is None and path.exists() and path.stat().st_size and not path.read_bytes(
            ).startswith(b'{"evaluate_math"'):
        raise value_error("out", f"out: {str(path)!r} is not an evaluate-math file (it must "
                                 f"open with its settings): give a new file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if held is None:
        path.write_bytes(b"")
    else:  # cut a torn last line, so the next record starts on a line of its own
        with open(path, "r+b") as f:
            f.truncate(f.read().rfind(b"\n") + 1)
    handle = open(path, "a", encoding="utf-8")
    if held is None:
        _append(handle, {"evaluate_math": settings})
    return handle, {r["id"]: r for r in records}


def _append(handle: Any, row: dict) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())  # on the disk before the next problem begins


def _record(index: int, problem: dict, prompt_text: str, outputs: list[str],
            vote: bool) -> dict:
    extracted = [extract_final_candidate(o) for o in outputs]
    correct = [grade_answer(e, problem["answer"]) for e in extracted]
    chosen = _majority(extracted) if vote else extracted[0]
    record = {
        "id": problem_id(problem, index), "index": index,
        "subject": problem.get("subject"), "level": problem.get("level"),
        "prompt": prompt_text, "answer": problem["answer"],
        "output": outputs[0], "extracted": chosen,
        "verdict": chosen is not None and grade_answer(chosen, problem["answer"]),
    }
    if len(outputs) > 1:
        record.update(outputs=outputs, extracted_all=extracted, correct=correct)
    return record


def evaluate_math(model: nn.Module, tokenizer: Any, problems: Sequence[dict],
                  out: str | os.PathLike[str], *, samples: int = 1, vote: bool = False,
                  temperature: float = 0.0, top_p: float | None = None,
                  max_new_tokens: int = 512, seed: int = 123, chat: bool = False,
                  progress: bool = False, settings: dict | None = None) -> dict:
    """Grade ``model`` on ``problems``, appending one record a problem to ``out`` (JSON lines),
    skipping the problems ``out`` already holds; returns ``summarize_math`` of all of them.

    Problem ``i``'s samples are drawn from a generator seeded with ``seed + i``, so a resumed
    evaluation draws what an uninterrupted one would. ``settings`` (the dataset's and the model's
    names, say) join the file's settings line, which a resume must match.
    """
    if tokenizer is None:
        raise value_error("tokenizer", "tokenizer must be the model's tokenizer (evaluation "
                                       "reads the prompt and the answers with it), got None")
    if not callable(getattr(tokenizer, "encode", None)) or not callable(
            getattr(tokenizer, "decode", None)):
        raise type_error("tokenizer", f"tokenizer must have encode and decode, got "
                                      f"{type(tokenizer).__name__}")
    check_instance("model", model, nn.Module, "a language model of gpt_components")
    problems = check_problems("problems", problems)
    check_int("samples", samples, low=1)
    check_bool("vote", vote)
    check_sampling(temperature, None, top_p)
    if samples > 1 and temperature == 0:
        raise value_error("temperature", f"temperature must be > 0 to draw samples={samples} "
                                         f"different answers (0 is greedy: all alike), got 0")
    check_int("max_new_tokens", max_new_tokens, low=1)
    check_int("seed", seed, low=0)
    check_bool("chat", chat)
    check_bool("progress", progress)
    check_instance("out", out, (str, os.PathLike), "a path (str or os.PathLike)")
    check_str("out", str(out))
    if chat:
        chat_format_for(tokenizer)  # a tokenizer with no chat format: refused before any work
    full = {"samples": samples, "vote": vote, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": max_new_tokens, "seed": seed, "chat": chat, **(settings or {})}
    handle, held = _open_for_append(Path(out), full)
    device = next(model.parameters()).device
    todo = [(i, p) for i, p in enumerate(problems) if problem_id(p, i) not in held]
    bar = _progress(len(problems), len(problems) - len(todo), progress)
    try:
        for index, problem in todo:
            prompt, stops = _prompt_and_stops(tokenizer, problem["problem"], chat)
            generator = (torch.Generator(device=device).manual_seed(seed + index)
                         if temperature > 0 else None)
            outputs = _sample(model, tokenizer, prompt, stops, samples, temperature, top_p,
                              max_new_tokens, generator, device)
            record = _record(index, problem, render_prompt(problem["problem"]), outputs, vote)
            _append(handle, record)
            held[record["id"]] = record
            if bar is not None:
                bar.update(1)
                bar.set_postfix(accuracy=f"{_accuracy(held.values()):.1%}")
    finally:
        handle.close()
        if bar is not None:
            bar.close()
    chosen = [held[problem_id(p, i)] for i, p in enumerate(problems)]
    return summarize_math(chosen, samples)


def _progress(total: int, done: int, shown: bool) -> Any:
    if not shown:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="evaluate-math", unit="problem", dynamic_ncols=True)


def _accuracy(records: Any) -> float:
    records = list(records)
    return sum(bool(r["verdict"]) for r in records) / len(records) if records else 0.0


def summarize_math(records: Sequence[dict], samples: int = 1) -> dict:
    """Accuracy of ``records`` (their ``verdict``) overall, by subject and by level, as
    ``{"accuracy", "correct", "total", "by_subject": {s: [correct, total]}, "by_level": ...}``;
    with ``samples`` > 1 also ``pass_at_k``: ``{k: mean pass@k}`` for k = 1, 2, 4, ...,
    samples."""
    check_int("samples", samples, low=1)
    summary: dict[str, Any] = {"correct": sum(bool(r["verdict"]) for r in records),
                               "total": len(records), "accuracy": _accuracy(records)}
    for key, field in (("by_subject", "subject"), ("by_level", "level")):
        table: dict[str, list[int]] = {}
        for record in records:
            cell = table.setdefault(str(record.get(field)), [0, 0])
            cell[0] += bool(record["verdict"])
            cell[1] += 1
        summary[key] = dict(sorted(table.items()))
    if samples > 1 and records:
        ks = sorted({samples} | {2 ** j for j in range(samples.bit_length())})  # 1, 2, 4, ...
        summary["pass_at_k"] = {k: sum(pass_at_k(samples, sum(r["correct"]), k) for r in records)
                                / len(records) for k in ks}
    return summary


def format_math_summary(summary: dict) -> list[str]:
    """The summary as lines: the accuracy, then one line per subject and per level."""
    lines = [f"accuracy: {summary['accuracy']:.1%} ({summary['correct']}/{summary['total']})"]
    for key, title in (("by_subject", "subject"), ("by_level", "level")):
        width = max((len(name) for name in summary[key]), default=0)
        for name, (correct, total) in summary[key].items():
            lines.append(f"  {title} {name:<{width}}  {correct / total:6.1%}  ({correct}/{total})")
    for k, value in summary.get("pass_at_k", {}).items():
        lines.append(f"  pass@{k}: {value:.1%}")
    return lines
