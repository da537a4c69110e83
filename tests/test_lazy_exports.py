"""Package ``__init__``s export lazily: a component imports its own module only, the public names still work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import qddens_monai.data
import qddens_monai.networks
from qddens_monai.export.imports import defining_module, lazy_table, module_closure

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "qddens_monai"


def imported_after(statement: str) -> set:
    code = f"import sys; {statement}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('qddens_monai'))))"
    proc = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=True,
    )
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_one_component_imports_its_module_only():
    mods = imported_after("from qddens_monai.data import label_transform")
    assert "qddens_monai.data.transforms" in mods
    assert not {"qddens_monai.data.dicom_seg", "qddens_monai.data.drive", "qddens_monai.data.demo"} & mods
    assert not any(m.startswith("qddens_monai.networks") for m in mods)


def test_public_names_submodules_and_dir():
    from qddens_monai.networks import QMENet
    from qddens_monai.networks.qmenet import QMENet as Direct

    assert QMENet is Direct and qddens_monai.networks.QMENet is Direct
    assert qddens_monai.data.demo.__name__ == "qddens_monai.data.demo"  # a submodule, imported on access
    assert {"QMENet", "as_staged"} <= set(dir(qddens_monai.networks)) and "QMENet" in qddens_monai.networks.__all__
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        qddens_monai.networks.NoSuchThing  # noqa: B018


def test_every_exported_name_resolves():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        package = f"qddens_monai.{init.parent.name}"
        if package == "qddens_monai.label":
            continue  # the label extra
        module = __import__(package, fromlist=["_"])
        for name, source in lazy_table(init, package).items():
            assert getattr(module, name) is getattr(__import__(source, fromlist=["_"]), name), (package, name)


def test_the_import_graph_follows_lazy_exports():
    assert defining_module(PACKAGE, "qddens_monai", "qddens_monai.networks.QMENet")[0] == "qddens_monai.networks.qmenet"
    assert defining_module(PACKAGE, "qddens_monai", "qddens_monai.handlers.max_disagreement")[0] == (
        "qddens_monai.ensemble.disagreement"
    )
    closure = module_closure(PACKAGE, "qddens_monai", {"qddens_monai.networks.QMENet"})
    assert {
        "qddens_monai.networks.qmenet",
        "qddens_monai.networks.staged_monai",
        "qddens_monai.quantization.network",
        "qddens_monai._lazy",
        "qddens_monai",
    } <= set(closure)
    assert not any(m.startswith(("qddens_monai.data", "qddens_monai.handlers", "qddens_monai.label")) for m in closure)
