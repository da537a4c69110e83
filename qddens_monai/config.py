"""Where the repository's bundle is, how its configs are read, and type and range checks of their settings.

MONAI's runner hands command-line overrides to the config as Python values parsed by ``fire``: ``--epochs
abc`` arrives as the string ``'abc'`` and would fail much later, deep inside an expression, with a
message that names neither the setting nor the flag. Each setting lives in one place, its top-level key
(``"epochs": 60``), and its check in :data:`SETTING_CHECKS`; the configs' ``"settings":
"$qddens_monai.config.check_settings()"`` reads every top-level key of the running config that has a
check, and ``initialize`` resolves it first: every wrong value is reported at once, as ``--name: what was
expected, what was given``, before any file is read or written.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["REPOSITORY", "bundle_dir", "load_bundle_configs", "SettingsError", "SETTING_CHECKS", "check_settings"]

#: the repository ``qddens_monai`` is installed from (editable install): it holds ``bundle/``, ``LICENSE``, ``docs/``
REPOSITORY = Path(__file__).resolve().parents[1]


def bundle_dir() -> Path:
    """The repository's bundle folder (``bundle/`` beside the installed ``qddens_monai`` package)."""
    path = REPOSITORY / "bundle"
    if not (path / "configs" / "inference.json").is_file():
        raise FileNotFoundError(
            f"no bundle at {path}: qddens_monai must be installed from the repository (pip install -e .), "
            "or pass the bundle folder explicitly."
        )
    return path


def load_bundle_configs(
    files: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    bundle: Union[str, os.PathLike, None] = None,
    merge: bool = True,
) -> dict:
    """MONAI's ``ConfigParser.load_config_files(files)`` with the file macros inlined from the bundle folder.

    The configs share one ``network_def``: ``inference.json`` holds ``"%configs/train.json#network_def"``.
    MONAI resolves such a macro relative to the working directory, which is the bundle folder when
    ``python -m monai.bundle run`` is started there as documented; code that reads the configs from
    elsewhere (export, MONAI Label, tests) reads them through this function, which replaces every
    ``"%<relative path>#<id>"`` by that content of ``bundle/<relative path>``.

    Args:
        files: config files, merged in order as MONAI merges them.
        bundle: the bundle folder the macros' paths are relative to (default: the parent of the first
            file's folder, i.e. ``<bundle>/configs/x.json`` -> ``<bundle>``).
        merge: merge the files as MONAI does (ids such as ``"train#handlers"`` set into the config they
            extend). ``False`` keeps one file's keys as written (an overlay such as ``distill.json`` read on
            its own, e.g. to write it elsewhere).

    Returns:
        the merged config, a plain ``dict`` for ``ConfigParser(config)`` or ``parser.read_config(config)``.
    """
    from monai.bundle import ConfigParser

    names = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    root = Path(bundle) if bundle is not None else Path(names[0]).resolve().parent.parent

    def inline(value: Any, depth: int = 0) -> Any:
        if isinstance(value, dict):
            return {k: inline(v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [inline(v, depth) for v in value]
        if isinstance(value, str) and value.startswith("%"):
            path, ids = ConfigParser.split_path_id(value[1:])
            if path and not os.path.isabs(path):
                if depth > 8:
                    raise ValueError(f"config macro {value!r}: macros nested more than 8 deep (a cycle?).")
                return inline(ConfigParser(ConfigParser.load_config_file(str(root / path)))[ids], depth + 1)
        return value

    if not merge:
        if len(names) != 1:
            raise ValueError(f"merge=False reads one file, got {len(names)}.")
        return inline(ConfigParser.load_config_file(str(names[0])))
    return inline(ConfigParser.load_config_files([str(n) for n in names]))


class SettingsError(ValueError):
    """Settings of the wrong type or out of range; ``problems`` lists ``(name, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  --{name}: {what}" for name, what in problems)
        super().__init__(f"{len(problems)} invalid setting(s) (config id or command-line override):\n{lines}")


def _int(low: int | None = None, high: int | None = None) -> Callable[[Any, Mapping], str | None]:
    def check(v: Any, _: Mapping) -> str | None:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            return "must be an integer" + (f" >= {low}" if low is not None else "")
        if (low is not None and v < low) or (high is not None and v > high):
            return f"must be an integer in [{low}, {high if high is not None else 'inf'}]"
        return None

    return check


def _number(low: float | None = None, low_open: bool = False, high: float | None = None, high_open: bool = False):
    def check(v: Any, _: Mapping) -> str | None:
        lo = f"{'(' if low_open else '['}{low if low is not None else '-inf'}"
        rng = f"{lo}, {high if high is not None else 'inf'}{')' if high_open or high is None else ']'}"
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
            return f"must be a number in {rng}"
        if (
            low is not None
            and (v < low or (low_open and v == low))
            or high is not None
            and (v > high or (high_open and v == high))
        ):
            return f"must be a number in {rng}"
        return None

    return check


def _portions(v: Any, _: Mapping) -> str | None:
    need = (
        "must be a list of strictly increasing accumulated portions in (0, 1] ending at 1.0, e.g. [0.3, 0.6, 0.8, 1.0]"
    )
    if (
        not isinstance(v, (list, tuple))
        or not v
        or any(isinstance(p, bool) or not isinstance(p, numbers.Real) for p in v)
    ):
        return need
    if any(b <= a for a, b in zip(v, v[1:])) or v[0] <= 0 or abs(float(v[-1]) - 1.0) > 1e-9:
        return need
    return None


def _roi_size(v: Any, settings: Mapping) -> str | None:
    dims = settings.get("spatial_dims")
    example = [64] * (dims if dims in (2, 3) else 2)
    need = f"must be a list of {dims if isinstance(dims, int) else 'spatial_dims'} positive integers, e.g. {example}"
    if not isinstance(v, (list, tuple)) or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in v
    ):
        return need
    if isinstance(dims, int) and len(v) != dims:
        return need
    return None


def _or_auto(check: Callable[[Any, Mapping], str | None]) -> Callable[[Any, Mapping], str | None]:
    """``check``, or the string ``"auto"``: planned from the data set (:mod:`qddens_monai.data.plan`)."""

    def auto(v: Any, settings: Mapping) -> str | None:
        what = None if v == "auto" else check(v, settings)
        return f"{what}, or 'auto' (planned from the data)" if what else None

    return auto


def _modality(v: Any, _: Mapping) -> str | None:
    from .data.transforms import MODALITIES, MODALITY_ALIASES, modality_name

    if isinstance(v, str) and modality_name(v) is not None:
        return None
    return f"must be one of {list(MODALITIES)} or an alias {sorted(MODALITY_ALIASES)}"


def _path(v: Any, _: Mapping) -> str | None:
    return None if isinstance(v, (str, os.PathLike)) else "must be a path (a string)"


#: setting name -> check returning ``None`` or what is expected
SETTING_CHECKS: dict[str, Callable[[Any, Mapping], str | None]] = {
    "spatial_dims": _int(2, 3),
    "in_channels": _or_auto(_int(1)),
    "num_classes": _or_auto(_int(2)),
    "modality": _or_auto(_modality),
    "roi_size": _or_auto(_roi_size),
    "num_samples": _or_auto(_int(1)),
    "batch_size": _int(1),
    "epochs": _int(0),
    "epochQ": _int(1),
    "portions": _portions,
    "alpha": _number(0.0),
    "learning_rate": _number(0.0, low_open=True),
    "lr_decay_per_step": _number(0.0, low_open=True),
    "val_interval": _int(1),
    "val_fraction": _number(0.0, high=1.0, high_open=True),
    "seed": _int(0, 2**32 - 1),
    "demo_size": _int(16),
    "student_epochs": _int(1),
    "distill_alpha": _number(0.0, high=1.0),
    "temperature": _number(0.0, low_open=True),
    "dist_timeout": _int(1),
    "dataset_dir": _path,
    "output_dir": _path,
    "resume_from": _path,
}


def check_settings(
    settings: Optional[Mapping[str, Any]] = None,
    checks: Optional[Mapping[str, Callable[[Any, Mapping], Optional[str]]]] = None,
) -> dict:
    """Check settings against :data:`SETTING_CHECKS`; returns them as a dict.

    Args:
        settings: ``{name: value}``; names without a check are accepted as they are. ``None`` (the bundle
            configs' ``"$qddens_monai.config.check_settings()"``): the top-level keys of the config being
            resolved that have a check, resolved (so command-line overrides included).
        checks: other checks (default :data:`SETTING_CHECKS`).

    Raises:
        SettingsError: naming every wrong setting, what it must be and the value and type given.
        TypeError: ``settings`` omitted outside a MONAI bundle config.
    """
    checks = SETTING_CHECKS if checks is None else checks
    if settings is None:
        settings = _config_settings(checks)
    problems = []
    for name, value in settings.items():
        check = checks.get(name)
        what = check(value, settings) if check is not None else None
        if what:
            problems.append((name, f"{what}; got {value!r} ({type(value).__name__})"))
    if problems:
        raise SettingsError(problems)
    return dict(settings)


def _config_settings(checks: Mapping[str, Any]) -> dict:
    # A "$" expression sees only the ids it names; the config being resolved is the ReferenceResolver
    # evaluating it, found up the stack, whose items are every id of the (merged, overridden) config.
    from monai.bundle.reference_resolver import ReferenceResolver

    frame = inspect.currentframe()
    while frame is not None and not isinstance(frame.f_locals.get("self"), ReferenceResolver):
        frame = frame.f_back
    if frame is None:
        raise TypeError(
            "check_settings() without settings reads the MONAI bundle config it is evaluated in; "
            "called from Python, pass the settings mapping."
        )
    resolver = frame.f_locals["self"]
    del frame
    return {name: resolver.get_resolved_content(name) for name in checks if name in resolver.items}
