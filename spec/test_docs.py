"""Every module's docstring example and every Python block of the README runs and holds."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import gpt_components

pytestmark = pytest.mark.docs

README = Path(__file__).resolve().parent.parent / "README.md"
MODULES = sorted(
    info.name for info in pkgutil.walk_packages(gpt_components.__path__, "gpt_components.")
)


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


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_blocks_run(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python_blocks()[index], f"README.md block {index}", "exec"), {})


def test_the_readme_finetuning_table_counts_the_parameters_the_code_trains():
    # The table's accuracies and times are a dated measurement; its parameter counts must hold.
    from gpt_components import (
        GPTConfig,
        GPTModel,
        count_trainable_parameters,
        make_classifier,
        replace_linear_with_lora,
    )

    rows = re.findall(r"^\| `finetune-classifier (.*?)`, 3 epochs \| ([\d,]+)",
                      README.read_text(encoding="utf-8"), flags=re.M)
    assert len(rows) == 2
    for flags, figure in rows:
        with torch.device("meta"):
            model = make_classifier(GPTModel(GPTConfig.from_name("gpt-nano")), 2, None)
            if "--lora-rank" in flags:
                rank = int(re.search(r"--lora-rank (\d+)", flags).group(1))
                alpha = float(re.search(r"--lora-alpha (\d+)", flags).group(1))
                replace_linear_with_lora(model, rank, alpha)
        assert count_trainable_parameters(model) == int(figure.replace(",", "")), flags


def test_the_readme_names_the_hub_command_that_current_huggingface_hub_ships():
    # Current huggingface_hub releases ship only the `hf` command, not `huggingface-cli`.
    assert "huggingface-cli" not in README.read_text(encoding="utf-8")
