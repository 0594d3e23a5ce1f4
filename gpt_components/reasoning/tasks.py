"""A task with verifiable answers that the package makes itself: addition with carries written out.

To watch reinforcement learning work on a CPU, a model needs problems it sometimes solves:
MATH-500 is far beyond a model trained in minutes. Addition of multi-digit numbers is not, when
the worked solution spells out each column, units first, with its carry, then boxes the sum::

    Q:347+285
    7+5=12
    4+8+1=13
    3+2+1=6
    \\boxed{632}

A small model learns the format and most columns from a few thousand worked examples; it
still slips (a carry forgotten, a digit copied in the wrong order into the box), which is the
partial accuracy GRPO needs: some answers in a group right, some wrong.

Exports ``arithmetic_problems`` (records ``{"problem": "347+285", "answer": "632"}``,
deterministic from a seed, train or held-out ``test`` split: a pair of operands belongs to
one split only), ``worked_solution``, ``task_prompt``, ``worked_example``,
``write_worked_examples`` (a corpus for ``gpt-components train``, examples separated by
``<|endoftext|>``), ``reward_exact`` (1.0 when the first boxed answer is exactly the ground
truth), ``reward_boxed_format`` (1.0 when the answer boxes a number at all: a shaping bonus
that a model which rarely gets the sum right can still earn) and ``task_accuracy`` (greedy
answers to held-out problems, graded by a reward).

>>> problems = arithmetic_problems(2, split="test", seed=0, max_digits=3)
>>> problems == arithmetic_problems(2, split="test", seed=0, max_digits=3)
True
>>> print(worked_example({"problem": "347+285", "answer": "632"}))
Q:347+285
7+5=12
4+8+1=13
3+2+1=6
\\boxed{632}
>>> reward_exact("7+5=12\\n\\\\boxed{632} and \\\\boxed{1}", "632")
1.0
"""

from __future__ import annotations

import os
import random
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..machinery.atomic import write_bytes_atomically
from ..machinery.checks import check_choice, check_int, check_str, type_error, value_error
from .scaling import eos_id_of, sample_responses

__all__ = [
    "arithmetic_problems",
    "worked_solution",
    "task_prompt",
    "worked_example",
    "write_worked_examples",
    "reward_exact",
    "reward_boxed_format",
    "task_accuracy",
]

ENDOFTEXT = "<|endoftext|>"
_PROBLEM = re.compile(r"^(\d+)\+(\d+)$")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
HELD_OUT_PERCENT = 10  # of all operand pairs: the test split's


def _is_test(a: int, b: int) -> bool:
    """A pair's split, fixed forever by a checksum of its text (not by any seed)."""
    return zlib.crc32(f"{a}+{b}".encode()) % 100 < HELD_OUT_PERCENT


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def arithmetic_problems(n: int, *, split: str = "train", seed: int = 0, min_digits: int = 1,
                        max_digits: int = 3) -> list[dict[str, str]]:
    """``n`` addition problems of the ``split`` (``"train"`` or ``"test"``), drawn with
    ``seed``: each operand has ``min_digits`` to ``max_digits`` digits. About 10% of all pairs
    are held out for ``test``, whatever the seed, so no test problem is ever trained on."""
    check_int("n", n, low=0)
    check_choice("split", split, ("train", "test"))
    check_int("seed", seed, low=0)
    check_int("min_digits", min_digits, low=1, high=9)
    check_int("max_digits", max_digits, low=min_digits, high=9)
    rng = random.Random(f"arithmetic-{split}-{seed}")
    problems = []
    while len(problems) < n:
        a, b = _operand(rng, min_digits, max_digits), _operand(rng, min_digits, max_digits)
        if _is_test(a, b) == (split == "test"):
            problems.append({"problem": f"{a}+{b}", "answer": str(a + b)})
    return problems


def _operands(problem: str) -> tuple[int, int]:
    check_str("problem", problem)
    match = _PROBLEM.match(problem)
    if match is None:
        raise value_error("problem", f"problem must be 'A+B' with whole numbers A and B, got "
                                     f"{problem!r}")
    return int(match.group(1)), int(match.group(2))


def worked_solution(problem: str) -> str:
    """The columns of ``problem`` (``"347+285"``), units first, each ``a+b(+carry)=sum``, then
    the boxed sum."""
    a, b = _operands(problem)
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    width = max(len(digits_a), len(digits_b))
    lines, carry = [], 0
    for i in range(width):
        x = int(digits_a[i]) if i < len(digits_a) else 0
        y = int(digits_b[i]) if i < len(digits_b) else 0
        total = x + y + carry
        lines.append(f"{x}+{y}" + ("+1" if carry else "") + f"={total}")
        carry = total // 10
    return "\n".join(lines) + f"\n\\boxed{{{a + b}}}"


def task_prompt(problem: str) -> str:
    """What the model reads before answering: ``"Q:347+285\\n"``."""
    _operands(problem)
    return f"Q:{problem}\n"


def worked_example(record: Mapping[str, str]) -> str:
    """A record's prompt and worked solution: one example of the training corpus."""
    if not isinstance(record, Mapping) or "problem" not in record:
        raise type_error("record", f"record must be a mapping with a 'problem', got {record!r}")
    return task_prompt(record["problem"]) + worked_solution(record["problem"])


def write_worked_examples(path: str | os.PathLike, n: int, *, seed: int = 0,
                          min_digits: int = 1, max_digits: int = 3,
                          width: int | None = None) -> Path:
    """Write ``n`` worked training examples to ``path`` (atomically), each followed by
    ``<|endoftext|>``: a corpus for ``gpt-components train --corpus``.

    ``width`` pads every example with further ``<|endoftext|>`` to exactly ``width`` tokens
    of a byte-level tokenizer (a character each, the end of text one): with ``train
    --context-length`` equal to it, every training window is one example from its first
    token, so the question's digits sit at the positions a prompt puts them.
    """
    check_int("width", width, low=1, optional=True)
    problems = arithmetic_problems(n, split="train", seed=seed, min_digits=min_digits,
                                   max_digits=max_digits)
    examples = [worked_example(p) + "\n" for p in problems]
    longest = max((len(e) + 1 for e in examples), default=0)
    if width is not None and longest > width:
        raise value_error("width", f"width must hold the longest example and its end of "
                                   f"text, {longest} tokens, got {width}")
    text = "".join(e + ENDOFTEXT * ((width or len(e) + 1) - len(e)) for e in examples)
    write_bytes_atomically(path, text.encode("utf-8"))
    return Path(path)


def reward_exact(answer_text: str, ground_truth: str) -> float:
    """1.0 if the first ``\\boxed{...}`` of ``answer_text`` is exactly ``ground_truth``
    (spaces aside), else 0.0: the task's own check, exact and instant."""
    check_str("answer_text", answer_text, empty=True)
    check_str("ground_truth", ground_truth, empty=True)
    match = _BOXED.search(answer_text)
    return float(match is not None and match.group(1).strip() == ground_truth.strip())


def reward_boxed_format(answer_text: str) -> float:
    """1.0 if ``answer_text`` holds a ``\\boxed{...}`` with a number in it, else 0.0: credit
    for the form of an answer, whatever its value."""
    check_str("answer_text", answer_text, empty=True)
    match = _BOXED.search(answer_text)
    return float(match is not None and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", match.group(1))
                 is not None)


@torch.no_grad()
def task_accuracy(model: nn.Module, tokenizer: Any, problems: Sequence[Mapping[str, str]], *,
                  prompt_fn: Callable[[str], str] = task_prompt,
                  reward_fn: Callable[[str, str], float] = reward_exact,
                  max_new_tokens: int = 64) -> float:
    """The share of ``problems`` whose greedy answer ``reward_fn`` scores 1."""
    if isinstance(problems, (str, Mapping)) or not isinstance(problems, Sequence) or not problems:
        raise type_error("problems", "problems must be a non-empty list of {'problem', "
                                     "'answer'} records")
    was_training = model.training
    model.eval()
    correct = 0
    for record in problems:
        ids = list(tokenizer.encode(prompt_fn(record["problem"])))
        answer = sample_responses(model, ids, 1, max_new_tokens=max_new_tokens, temperature=0,
                                  eos_token_id=eos_id_of(tokenizer))[0]
        correct += reward_fn(tokenizer.decode(answer), record["answer"]) == 1.0
    model.train(was_training)
    return correct / len(problems)
