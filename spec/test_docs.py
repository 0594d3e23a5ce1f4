"""Every module's docstring example, and every Python block of the README and the guides, runs.

The README is the front page and ``docs/*.md`` are the chapter guides. A guide reads as one
session: its blocks run in order in one namespace (a later block may use an earlier block's
names), in a fresh temporary directory, so a guide's code never goes stale. ```` ```bash ````
and ```` ```text ```` blocks are shown, never run.
"""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import gpt_components

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *GUIDES]
MODULES = sorted(
    info.name for info in pkgutil.walk_packages(gpt_components.__path__, "gpt_components.")
)


def _name(document: Path) -> str:
    return document.relative_to(ROOT).as_posix()


def _python_blocks(document: Path) -> list[tuple[int, str]]:
    """Each ```python block of a document, with the line its code starts on."""
    text = document.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def _links(document: Path) -> list[str]:
    """The targets of a document's Markdown links and images, without their #anchors."""
    text = re.sub(r"^```.*?^```", "", document.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_hold(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_module_documents_itself_with_an_example():
    undocumented = [
        name for name in MODULES
        if ">>>" not in (importlib.import_module(name).__doc__ or "")
    ]
    assert undocumented == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_python_block_of_a_guide_runs_in_order(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__guide__"}
    for index, (line, code) in enumerate(_python_blocks(document)):
        where = f"{_name(document)}, python block {index} (line {line})"
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{where} failed: {error!r}") from error


def test_every_guide_is_linked_from_the_readmes_chapter_table():
    table = re.search(r"^## Chapters\n(.*?)^## ", README.read_text(encoding="utf-8"),
                      flags=re.S | re.M)
    assert table is not None, "README.md has no '## Chapters' section"
    rows = [line for line in table.group(1).splitlines() if line.startswith("|")]
    linked = {target for row in rows for target in re.findall(r"\]\((docs/[^)#\s]+)", row)}
    assert sorted({_name(guide) for guide in GUIDES} - linked) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_link_resolves_to_a_file_in_the_repository(document):
    missing = []
    for target in _links(document):
        if re.match(r"[a-z]+:", target) or not target:  # https:, mailto:, or a bare #anchor
            continue
        path = (document.parent / target).resolve()
        if path.exists():
            continue
        missing.append(target)
    assert missing == []


def test_the_finetuning_table_counts_the_parameters_the_code_trains():
    # The table's accuracies and times are a dated measurement; its parameter counts must hold.
    from gpt_components import (
        GPTConfig,
        GPTModel,
        count_trainable_parameters,
        make_classifier,
        replace_linear_with_lora,
    )

    text = (ROOT / "docs" / "ch06-classification.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `finetune-classifier (.*?)`, 3 epochs \| ([\d,]+)", text, flags=re.M)
    assert len(rows) == 2
    for flags, figure in rows:
        with torch.device("meta"):
            model = make_classifier(GPTModel(GPTConfig.from_name("gpt-nano")), 2, None)
            if "--lora-rank" in flags:
                rank = int(re.search(r"--lora-rank (\d+)", flags).group(1))
                alpha = float(re.search(r"--lora-alpha (\d+)", flags).group(1))
                replace_linear_with_lora(model, rank, alpha)
        assert count_trainable_parameters(model) == int(figure.replace(",", "")), flags


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_the_docs_name_the_hub_command_that_current_huggingface_hub_ships(document):
    # Current huggingface_hub releases ship only the `hf` command, not `huggingface-cli`.
    assert "huggingface-cli" not in document.read_text(encoding="utf-8")
