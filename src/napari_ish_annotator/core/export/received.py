"""Vetting a received bioimage.io package before anything reads it (issues 23 and 24).

A package is a zip that someone else made. Before bioimageio.spec, bioimageio.core or torch
sees it, :func:`vet_package` checks, with bounded time and memory:

- the zip: a regular file; member names plain and relative (no absolute names, no ``..``,
  no symlinks, no duplicates); declared sizes within the memory budget;
- ``rdf.yaml``: at most 1 MiB, safe YAML only (``!!python/...`` tags refused), aliases
  bounded by the size of the tree they expand to (an alias bomb is refused, not expanded),
  nesting bounded;
- every file it refers to (``source``, ``documentation``, ``covers``, test tensors,
  ``dependencies``, architecture files): a member of the zip itself - no URL is fetched and
  no path outside the zip is opened.

Nothing is extracted and nothing is written. Each refusal is one :class:`InputError` line.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..utils.arrays import _MAX_ZIP_RECORDS, model_budget, open_regular, over_budget
from ..utils.errors import InputError

__all__ = ["ReceivedPackage", "vet_package"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
MAX_RDF_BYTES = 1 << 20
#: nodes the rdf.yaml may expand to with its aliases followed (ours has a few hundred)
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
#: keys whose string values (recursively) name files of the package
FILE_KEYS = frozenset({"source", "documentation", "covers", "files", "dependencies",
                       "test_inputs", "test_outputs", "sample_inputs", "sample_outputs"})
_HINT = "do not use this package, or ask its authors for one made by a bioimage.io tool"


@dataclass(frozen=True)
class ReceivedPackage:
    """A vetted package: its path, member names and parsed ``rdf.yaml``."""

    path: Path
    members: frozenset[str]
    rdf: dict

    def read(self, name: str, budget: int | None = None) -> bytes:
        """One member's bytes (bounded by its declared size, itself within the budget)."""
        budget = model_budget() if budget is None else budget
        with open_regular(self.path, "package") as fh, zipfile.ZipFile(fh) as zf:
            info = zf.getinfo(name)
            if info.file_size > budget:
                raise over_budget(info.file_size, f"the package member {name}", self.path)
            try:
                return zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise refuse(self.path, f"member {name} is damaged ({exc})") from None


def refuse(path: Path, why: str) -> InputError:
    return InputError(f"refusing this bioimage.io package: {why}; {_HINT}", path=path)


def _check_member(path: Path, info: zipfile.ZipInfo, seen: set[str]) -> None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise refuse(path, f"member {name[:80]!r} is a symlink")
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise refuse(path, f"member {name[:80]!r} has an absolute name")
    if ".." in pure.parts or "\0" in name:
        raise refuse(path, f"member {name[:80]!r} climbs out with '..'")
    if name in seen:
        raise refuse(path, f"member {name[:80]!r} occurs twice")
    seen.add(name)


def _yaml(path: Path, text: bytes) -> Any:
    """Parse with PyYAML's SafeLoader; the composed tree is measured with aliases followed
    (stopping at :data:`MAX_YAML_NODES`) before any Python object is built from it."""
    import yaml

    loader = yaml.SafeLoader(io.BytesIO(text))
    try:
        node = loader.get_single_node()
        if node is not None:
            _measure(path, node)
        return None if node is None else loader.construct_document(node)
    except RecursionError:
        raise refuse(path, "rdf.yaml is nested too deeply") from None
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:160]
        raise refuse(path, f"rdf.yaml is not plain (safe) YAML ({first})") from None
    finally:
        loader.dispose()


def _measure(path: Path, root: Any) -> None:
    import yaml

    stack, visited = [(root, 1)], 0
    while stack:
        node, depth = stack.pop()
        visited += 1
        if visited > MAX_YAML_NODES:
            raise refuse(path, f"rdf.yaml expands to more than {MAX_YAML_NODES} values (an "
                               "alias bomb?)")
        if depth > MAX_YAML_DEPTH:
            raise refuse(path, f"rdf.yaml is nested more than {MAX_YAML_DEPTH} levels")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))


def _file_refs(data: Any) -> list[tuple[str, str]]:
    """``(key, value)`` of every string the rdf uses as a file reference (lists inherit their
    key; a spec-0.4 architecture ``"file.py:callable"`` names its file)."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[Any, str | None]] = [(data, None)]
    while stack:
        item, key = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, key) for v in item)
        elif isinstance(item, str) and key in FILE_KEYS:
            out.append((key, item))
        elif isinstance(item, str) and key == "architecture" and ".py:" in item:
            out.append((key, item.split(".py:")[0] + ".py"))
    return out


def _check_ref(path: Path, members: frozenset[str], key: str, value: str) -> None:
    ref = value.strip()
    if key == "dependencies":
        for prefix in ("conda:", "pip:"):
            ref = ref[len(prefix):] if ref.startswith(prefix) else ref
    if "://" in ref or ref.lower().startswith(("http:", "https:", "ftp:", "file:", "doi:")):
        raise refuse(path, f"its {key} {ref[:80]!r} is a URL; a received package runs from "
                           "its own files only (nothing is downloaded)")
    name = ref[2:] if ref.startswith("./") else ref
    if name not in members:
        raise refuse(path, f"its {key} {ref[:80]!r} is not a file inside the package")


def vet_package(path: str | Path) -> ReceivedPackage:
    """The checked package (see the module docstring), or one InputError line."""
    path = Path(path)
    budget = model_budget()
    with open_regular(path, "package") as fh:
        try:
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                if len(infos) > _MAX_ZIP_RECORDS:
                    raise refuse(path, f"it holds {len(infos)} files")
                seen: set[str] = set()
                for info in infos:
                    _check_member(path, info, seen)
                total = sum(i.file_size for i in infos)
                if total > budget:
                    raise over_budget(total, "the package's files", path)
                rdf_name = next((n for n in RDF_NAMES if n in seen), None)
                if rdf_name is None:
                    raise refuse(path, "it has no rdf.yaml at its top level")
                info = zf.getinfo(rdf_name)
                if info.file_size > MAX_RDF_BYTES:
                    raise refuse(path, f"its {rdf_name} is larger than 1 MiB")
                text = zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError,
                NotImplementedError) as exc:
            raise InputError(f"not a readable bioimage.io package (a zip): {exc}",
                             path=path) from None
    rdf = _yaml(path, text)
    if not isinstance(rdf, dict):
        raise refuse(path, f"its {rdf_name} is not a mapping")
    members = frozenset(seen)
    for key, value in _file_refs(rdf):
        _check_ref(path, members, key, value)
    return ReceivedPackage(path=path, members=members, rdf=rdf)
