"""Spec for reasoning.math500: MATH-500 bundled, and the sequel's loader.

References: the file's sha256 as recorded beside it (assets/README.md) and in the shared data's
provenance; the published composition of MATH-500 (500 problems, 7 subjects, levels 1-5);
``json`` reading the file itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpt_components
from gpt_components.machinery.resources import resource_path
from gpt_components.reasoning.math500 import (
    MATH_DATASETS,
    load_math500_test,
    load_math_problems,
    problem_id,
)

pytestmark = pytest.mark.reasoning

BUNDLED = resource_path("math500_test.json")
PACKAGE = Path(gpt_components.__file__).parent


def test_the_bundled_file_is_the_one_its_provenance_records():
    readme = (PACKAGE / "assets" / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `math500_test.json`"))
    recorded = re.findall(r"\b[0-9a-f]{64}\b", row)
    assert recorded == [hashlib.sha256(BUNDLED.read_bytes()).hexdigest()]
    assert "MIT" in row and "Hendrycks" in row and "PRM800K" in row


def test_math500_holds_500_problems_of_seven_subjects_and_five_levels():
    problems = load_math500_test()
    assert problems == json.loads(BUNDLED.read_text(encoding="utf-8"))
    assert len(problems) == 500 and len({p["unique_id"] for p in problems}) == 500
    assert Counter(p["subject"] for p in problems) == {
        "Algebra": 124, "Intermediate Algebra": 97, "Prealgebra": 82, "Number Theory": 62,
        "Precalculus": 56, "Geometry": 41, "Counting & Probability": 38}
    assert Counter(p["level"] for p in problems) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
    assert all(isinstance(p["problem"], str) and isinstance(p["answer"], str) and p["answer"]
               for p in problems)
    assert load_math_problems("math500") == problems and set(MATH_DATASETS) == {"math500"}


def test_the_sequels_loader_reads_a_local_copy_or_saves_the_bundled_one_there(tmp_path):
    copy = tmp_path / "math500_test.json"
    assert load_math500_test(local_path=copy, save_copy=False) == load_math500_test()
    assert not copy.exists()
    assert load_math500_test(local_path=copy) == load_math500_test()  # save_copy=True
    assert copy.read_bytes() == BUNDLED.read_bytes()
    two = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4", "level": 1}]
    copy.write_text(json.dumps(two), encoding="utf-8")
    assert load_math500_test(local_path=copy) == two  # an existing copy is what is read
    assert [problem_id(p, i) for i, p in enumerate(two)] == ["#0", "#1"]


wrong_shapes = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.lists(st.fixed_dictionaries({"problem": st.text(max_size=5)}), min_size=1, max_size=3),
    st.lists(st.fixed_dictionaries({"problem": st.integers(), "answer": st.text(max_size=3)}),
             min_size=1, max_size=3),
    st.just([]), st.text(max_size=10), st.integers(),
)


@settings(deadline=None)
@given(data=wrong_shapes)
def test_a_file_of_the_wrong_shape_is_refused_naming_the_parameter(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    for name, load, parameter in (("local.json", lambda p: load_math500_test(local_path=p),
                                   "local_path"),
                                  ("data.json", load_math_problems, "dataset")):
        path = folder / name
        path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ValueError, match=f"^{parameter}") as error:
            load(str(path))
        assert error.value.parameter == parameter


def test_problems_come_from_json_lines_too_and_an_unknown_name_suggests_the_known(tmp_path):
    lines = tmp_path / "mine.jsonl"
    records = [{"problem": f"{i}+{i}?", "answer": str(2 * i), "unique_id": f"sum/{i}"}
               for i in range(3)]
    lines.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert load_math_problems(str(lines)) == records
    assert [problem_id(r, 7) for r in records] == ["sum/0", "sum/1", "sum/2"]
    with pytest.raises(ValueError, match=r"got 'math50' \(did you mean 'math500'\?\)") as error:
        load_math_problems("math50")
    assert error.value.parameter == "dataset"
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="^dataset: .* is not valid JSON"):
        load_math_problems(str(broken))


def test_nothing_in_the_package_reads_the_shared_data_folder():
    sources = [p for p in PACKAGE.rglob("*.py")]
    assert sources
    for path in sources:
        assert "shared/data" not in path.read_text(encoding="utf-8"), path
