"""Lazy package exports: a package's public names are imported from their submodule on first use.

A package ``__init__`` declares what it exports and where it comes from, and imports nothing::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {".cenet": ["CENet"], "..ensemble": ["EnsembleOutput"]})

``from qddens_monai.networks import CENet`` then imports ``qddens_monai.networks.cenet`` only: importing one
component does not import every submodule (and their third-party imports), which is what lets an exported
bundle vendor only the modules its configs use (``qddens_monai.export.vendor``). Submodules are reachable as
attributes too (``qddens_monai.networks.cenet``), imported on first access.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from importlib.util import find_spec
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` of the package ``package`` (its ``__name__``).

    Args:
        package: the package's ``__name__``.
        exports: relative module name (``".cenet"``, ``"..ensemble"``) -> the names taken from it. Keep it a
            literal dict: the exporter reads it with ``ast`` to follow a name to its module.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            value = getattr(import_module(module, package), name)
        elif not name.startswith("__") and find_spec(f"{package}.{name}") is not None:
            value = import_module(f".{name}", package)  # a submodule, as after an eager import
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # once: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, list(where)
