"""What a chapter folder's ``__init__.py`` does: import every module of the folder, export each
module's ``__all__``.

A chapter folder (``modern``, ``newest``, ``serving``, ``reasoning``) lists nothing by hand: a
new module is one new file, imported in name order (a family file registers its family on
import), and its ``__all__`` joins the folder's. Modules whose name starts with ``_`` are
private and left out.

>>> from gpt_components.machinery.chapter import import_chapter
>>> exports = import_chapter("gpt_components.modern")
>>> "DecoderModel" in exports
True
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = ["import_chapter"]


def import_chapter(package: str) -> dict[str, Any]:
    """Import every public module of ``package``; return ``{name: object}`` of their ``__all__``."""
    folder = importlib.import_module(package)
    infos = sorted(pkgutil.iter_modules(folder.__path__), key=lambda info: info.name)
    modules = [importlib.import_module(f"{package}.{info.name}") for info in infos
               if not info.name.startswith("_")]
    return {name: getattr(module, name) for module in modules
            for name in getattr(module, "__all__", ())}
