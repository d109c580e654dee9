"""The one lazy pattern of the project: a package face that names its public things without
importing them (PEP 562, the shape of scientific-python's ``lazy_loader.attach``).

Why: importing ``core.learn.metrics`` runs ``core/learn/__init__.py`` first. A face that imported
every module of its package would make reading one metric import the bundle, the extractor and
scipy, and would tie the packages into import circles. So a face lists ``{submodule: [names]}``
and :func:`attach` gives it ``__getattr__``, ``__dir__`` and ``__all__``: a name's submodule is
imported on first use and the value kept on the package. Each name has one home; the face is a
second way to reach the *same* object, never a copy. Heavy third-party packages (torch,
torchvision, dask, bioimageio, matplotlib, sklearn submodules) are not imported here: the
functions that need them import them where they run.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["attach"]


def attach(package: str, table: Mapping[str, Sequence[str]]
           ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the package ``package`` whose public names are
    ``table`` (``{"metrics": ["mean_auc", ...]}``); the submodules named there are reached as
    attributes too. A name that is also a submodule's name is
    refused: ``from pkg import name`` would then mean two things."""
    home: dict[str, str] = {}
    for module, names in table.items():
        for name in names:
            if name in table or name in home:
                raise ValueError(f"{package}: {name!r} is listed twice or is a submodule's name")
            home[name] = module

    def __getattr__(name: str) -> object:
        if name in table:  # a submodule, e.g. ``backbones.weights`` before anyone imported it
            return importlib.import_module(f"{package}.{name}")
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(home) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, sorted(home)
