"""The package's own task with verifiable answers: addition with the carries written out.

The reference is Python's integer addition; each worked line is re-read here and checked
column by column against the digits of the operands.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.reasoning.tasks import (
    arithmetic_problems,
    reward_exact,
    task_prompt,
    worked_example,
    worked_solution,
    write_worked_examples,
)

pytestmark = pytest.mark.reasoning


@settings(deadline=None)
@given(seed=st.integers(0, 10**6), split=st.sampled_from(["train", "test"]),
       digits=st.tuples(st.integers(1, 5), st.integers(0, 3)))
def test_problems_repeat_for_a_seed_and_answer_their_sums(seed, split, digits):
    low, high = digits[0], digits[0] + digits[1]
    problems = arithmetic_problems(20, split=split, seed=seed, min_digits=low, max_digits=high)
    assert problems == arithmetic_problems(20, split=split, seed=seed, min_digits=low,
                                           max_digits=high)
    for p in problems:
        a, b = map(int, p["problem"].split("+"))
        assert p["answer"] == str(a + b)
        assert all(low <= len(str(x)) <= high for x in (a, b))


def test_the_held_out_split_shares_no_problem_with_training():
    train = {p["problem"] for s in range(5) for p in arithmetic_problems(400, seed=s)}
    test = {p["problem"] for s in range(5)
            for p in arithmetic_problems(400, split="test", seed=s)}
    assert not train & test
    assert len(test) > 1000  # drawn, not one problem repeated
    assert arithmetic_problems(50, seed=1) != arithmetic_problems(50, seed=2)


@settings(deadline=None)
@given(a=st.integers(0, 10**7), b=st.integers(0, 10**7))
def test_each_worked_column_adds_its_digits_and_carry_and_the_box_holds_the_sum(a, b):
    lines = worked_solution(f"{a}+{b}").split("\n")
    assert lines[-1] == f"\\boxed{{{a + b}}}"
    columns = lines[:-1]
    assert len(columns) == max(len(str(a)), len(str(b)))
    carry = 0
    for i, line in enumerate(columns):
        x, y, rest = re.fullmatch(r"(\d)\+(\d)((?:\+1)?=\d+)", line).groups()
        assert (int(x), int(y)) == (a // 10**i % 10, b // 10**i % 10)
        assert rest.startswith("+1") == bool(carry)
        total = int(rest.split("=")[1])
        assert total == int(x) + int(y) + carry
        carry = total // 10
    assert reward_exact(worked_solution(f"{a}+{b}"), str(a + b)) == 1.0
    assert reward_exact(worked_solution(f"{a}+{b}"), str(a + b + 1)) == 0.0


def test_the_exact_reward_reads_the_first_box_only():
    assert reward_exact("\\boxed{12}\\boxed{13}", "12") == 1.0
    assert reward_exact("\\boxed{13}\\boxed{12}", "12") == 0.0
    assert reward_exact("12", "12") == 0.0
    assert reward_exact("\\boxed{ 12 }", "12") == 1.0


def test_the_corpus_is_worked_examples_separated_by_end_of_text(tmp_path):
    path = write_worked_examples(tmp_path / "corpus.txt", 30, seed=4)
    examples = path.read_text().split("<|endoftext|>")
    assert examples[-1] == "" and len(examples) == 31
    for text, p in zip(examples, arithmetic_problems(30, seed=4), strict=False):
        assert text == worked_example(p) + "\n"
        assert text.startswith(task_prompt(p["problem"]))


@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"split": "valid"}, "split"), ({"n": -1}, "n"), ({"max_digits": 0}, "max_digits"),
    ({"min_digits": 3, "max_digits": 2}, "max_digits")])
def test_bad_task_settings_are_refused_by_name(kwargs, parameter):
    with pytest.raises(ValueError) as caught:
        arithmetic_problems(**{"n": 3, **kwargs})
    assert caught.value.parameter == parameter
    with pytest.raises(ValueError) as caught:
        worked_solution("3*4")
    assert caught.value.parameter == "problem"


def test_the_format_reward_pays_a_boxed_number_right_or_wrong():
    from gpt_components.reasoning.tasks import reward_boxed_format

    assert reward_boxed_format("7+5=12\n\\boxed{13}") == 1.0
    assert reward_boxed_format("\\boxed{ 12 }") == 1.0
    assert reward_boxed_format("\\boxed{1") == 0.0  # never closed
    assert reward_boxed_format("\\boxed{x}") == 0.0 and reward_boxed_format("12") == 0.0


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 1000), width=st.integers(50, 80))
def test_padded_examples_fill_one_window_each_from_its_first_token(seed, width, tmp_path_factory):
    from gpt_components.bpe import BPETokenizer

    path = write_worked_examples(tmp_path_factory.mktemp("corpus") / "c.txt", 12, seed=seed,
                                 width=width)
    tokenizer = BPETokenizer.train("0123456789", vocab_size=257)  # bytes, no merges
    ids = tokenizer.encode(path.read_text(), allowed_special={"<|endoftext|>"})
    assert len(ids) == 12 * width
    for i, p in enumerate(arithmetic_problems(12, seed=seed)):
        window = ids[i * width:(i + 1) * width]
        text = worked_example(p) + "\n"
        assert tokenizer.decode(window[: len(text)]) == text
        assert set(window[len(text):]) == {tokenizer.eot_token}
    with pytest.raises(ValueError) as caught:
        write_worked_examples(tmp_path_factory.mktemp("c") / "c.txt", 12, seed=seed, width=20)
    assert caught.value.parameter == "width"
