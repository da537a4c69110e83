"""``metadata.json`` of an exported bundle: exact versions, changelog, and an offline check of the spec's
required fields."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import Any, Optional

__all__ = ["REQUIRED_KEYS", "REQUIRED_TENSOR_KEYS", "check_metadata", "build_metadata", "installed_version"]

#: The required top-level fields of MONAI's bundle metadata schema (``meta_schema_20240725.json``).
#: ``monai.bundle.verify_metadata`` downloads that schema; an export must validate without network.
REQUIRED_KEYS = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
#: Required fields of every entry of ``network_data_format["inputs"]`` / ``["outputs"]``.
REQUIRED_TENSOR_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def installed_version(package: str) -> str:
    """The installed version of the distribution ``package`` (e.g. ``"pytorch-ignite"``), without a local tag."""
    return importlib_metadata.version(package).split("+")[0]


def check_metadata(meta: Mapping[str, Any], source: str = "metadata.json") -> None:
    """Check ``meta`` offline against the bundle spec's required fields; all problems in one error.

    Raises:
        ValueError: naming ``source`` and each missing or malformed field.
    """
    problems = [f"missing {k!r}" for k in REQUIRED_KEYS if k not in meta]
    version = meta.get("version")
    if version is not None and not (isinstance(version, str) and _VERSION.match(version)):
        problems.append(f"'version' must look like 'X.Y.Z', got {version!r}")
    changelog = meta.get("changelog")
    if changelog is not None and (not isinstance(changelog, Mapping) or version not in changelog):
        problems.append(f"'changelog' must be a dict with an entry for version {version!r}")
    if not isinstance(meta.get("required_packages_version", {}), Mapping):
        problems.append("'required_packages_version' must be a dict of exact versions")
    fmt = meta.get("network_data_format")
    if fmt is not None:
        for part in ("inputs", "outputs"):
            tensors = fmt.get(part) if isinstance(fmt, Mapping) else None
            if not isinstance(tensors, Mapping) or not tensors:
                problems.append(f"'network_data_format.{part}' must be a non-empty dict")
                continue
            for name, tensor in tensors.items():
                missing = [k for k in REQUIRED_TENSOR_KEYS if k not in tensor]
                if missing:
                    problems.append(f"'network_data_format.{part}.{name}' lacks {missing}")
    if problems:
        raise ValueError(f"{source} does not satisfy the MONAI bundle metadata spec: " + "; ".join(problems) + ".")


def build_metadata(
    base: Mapping[str, Any],
    change: str,
    version: Optional[str] = None,
    packages: tuple[str, ...] = ("nibabel", "pillow", "pytorch-ignite"),
    overrides: Optional[Mapping[str, Any]] = None,
    optional_packages: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The metadata of an exported bundle, from the source bundle's ``base`` metadata.

    The versions of MONAI, PyTorch, NumPy and of ``packages`` are the ones installed now (the
    export is built and checked with them); ``qddens-monai`` is no longer a requirement since the
    code ships inside the bundle. ``optional_packages`` (what only some configs need) go to
    ``extra_packages_version``: not ``optional_packages_version``, which MONAI's config parser treats as a
    deprecated name of ``required_packages_version`` and renames, replacing the required list.
    A changelog entry ``change`` is added for ``version``
    (default: the base version).

    Raises:
        ValueError: the result does not satisfy :func:`check_metadata`.
    """
    meta = copy.deepcopy(dict(base))
    version = version or meta.get("version", "0.1.0")
    meta["version"] = version
    meta["changelog"] = {version: change, **{k: v for k, v in dict(meta.get("changelog", {})).items() if k != version}}
    meta["monai_version"] = installed_version("monai")
    meta["pytorch_version"] = installed_version("torch")
    meta["numpy_version"] = installed_version("numpy")
    meta["required_packages_version"] = {p: installed_version(p) for p in sorted(packages)}
    optional = sorted(set(optional_packages) - set(packages))
    if optional:
        meta["extra_packages_version"] = {p: installed_version(p) for p in optional}
    else:
        meta.pop("extra_packages_version", None)
    meta.update(copy.deepcopy(dict(overrides or {})))
    check_metadata(meta)
    return meta
