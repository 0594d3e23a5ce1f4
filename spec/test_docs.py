"""Every module's docstring example and every Python block of the README runs and holds."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

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
