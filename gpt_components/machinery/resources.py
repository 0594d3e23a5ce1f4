"""Files that ship inside the package: GPT-2's BPE tables and the bundled corpora.

Nothing here touches the network; see ``assets/README.md`` for where each file comes from
and its licence.

>>> resource_path("the-verdict.txt").name
'the-verdict.txt'
>>> len(load_text("the-verdict.txt"))
20479
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .checks import check_choice

__all__ = ["resource_path", "load_text", "BUNDLED_FILES"]

BUNDLED_FILES = (
    "the-verdict.txt",
    "tinyshakespeare.txt",
    "sms-spam-collection.tsv",
    "instruction-data.json",
    "instruction-data-with-preference.json",
    "math500_test.json",
    "gpt2/encoder.json",
    "gpt2/vocab.bpe",
)


def resource_path(name: str) -> Path:
    """Path of a bundled file, for example ``resource_path("gpt2/vocab.bpe")``."""
    check_choice("name", name, BUNDLED_FILES)
    return Path(str(resources.files("gpt_components") / "assets" / name))


def load_text(name: str) -> str:
    """Contents of a bundled text file, decoded as UTF-8."""
    return resource_path(name).read_text(encoding="utf-8")
