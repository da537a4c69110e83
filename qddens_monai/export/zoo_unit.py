"""The Model Zoo unit test of an exported bundle: ``ci/unit_tests/test_<name>.py``, to submit with the bundle.

The zoo runs one ``unittest`` file per bundle from its root (``PYTHONPATH`` = the root), after installing the
bundle's requirements; each test creates a ``ConfigWorkflow``, checks its properties, runs and finalizes it
(the layout of the zoo's own ``ci/unit_tests/test_spleen_ct_segmentation.py``). The file written here does the
same for the three workflows of a qddens-monai bundle: inference on generated demo images with the shipped
weights, a short training, and evaluation of its checkpoint (``train.json`` + ``evaluate.json``).
Everything the tests write goes to a temporary folder: the bundle folder is left as it was.

Only the standard library and MONAI are imported: the file is run in the bundle's environment, where
``qddens_monai`` is not installed (the bundle vendors its code in ``scripts/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["UNIT_TEST", "unit_test_text", "write_unit_test"]

#: The test file; ``{name}`` is the bundle name.
UNIT_TEST = """# Unit tests of the {name} bundle for the Model Zoo's ci/unit_tests runner
# (written by qddens-monai export-zoo). From the model zoo's root:
#     PYTHONPATH=. python -m unittest ci/unit_tests/test_{name}.py

import os
import shutil
import sys
import tempfile
import unittest

from monai.bundle import ConfigWorkflow

BUNDLE_ROOT = os.path.join("models", "{name}")
# a short schedule on small demo images: 1 float epoch + 4 incremental quantization steps of 1 epoch
FAST = {{"epochs": 1, "epochQ": 1, "val_interval": 5, "demo_size": 64}}


class TestBundle(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp()  # demo images, checkpoints and outputs: the bundle folder is not written
        if BUNDLE_ROOT not in sys.path:  # the configs import the bundle's code from scripts/
            sys.path.insert(0, BUNDLE_ROOT)

    def tearDown(self):
        shutil.rmtree(self.work)

    def workflow(self, workflow_type, configs, **override):
        override = {{
            "bundle_root": BUNDLE_ROOT,
            "demo_dir": os.path.join(self.work, "demo"),
            "output_dir": os.path.join(self.work, "eval"),
            **override,
        }}
        workflow = ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[os.path.join(BUNDLE_ROOT, "configs", c) for c in configs],
            logging_file=os.path.join(BUNDLE_ROOT, "configs", "logging.conf"),
            meta_file=os.path.join(BUNDLE_ROOT, "configs", "metadata.json"),
            **override,
        )
        workflow.initialize()
        return workflow

    def check_run(self, workflow, check_properties=True):
        if check_properties:
            missing = workflow.check_properties()
            if missing:
                raise ValueError(f"check properties for {{workflow.workflow_type}} failed: {{missing}}")
        workflow.run()
        workflow.finalize()

    def test_infer_config(self):
        inferrer = self.workflow("infer", ["inference.json"], demo_size=64)
        self.check_run(inferrer)
        self.assertTrue(os.listdir(os.path.join(self.work, "eval")), "no prediction written")

    def test_train_eval_config(self):
        ckpt_dir = os.path.join(self.work, "models")
        trainer = self.workflow("train", ["train.json"], ckpt_dir=ckpt_dir, **FAST)
        self.check_run(trainer)
        self.assertTrue(os.path.isfile(os.path.join(ckpt_dir, "model.pt")), "no checkpoint written")
        # evaluate.json overrides train.json: no properties to check (as in the zoo's tests)
        validator = self.workflow("eval", ["train.json", "evaluate.json"], ckpt_dir=ckpt_dir, **FAST)
        self.check_run(validator, check_properties=False)


if __name__ == "__main__":
    unittest.main()
"""


def unit_test_text(name: str) -> str:
    """The unit test file of the bundle ``name``."""
    return UNIT_TEST.format(name=name)


def write_unit_test(root: Union[str, os.PathLike], name: str) -> Path:
    """Write ``root/ci/unit_tests/test_<name>.py`` into a model-zoo-shaped folder ``root``; return its path."""
    path = Path(root) / "ci" / "unit_tests" / f"test_{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_test_text(name))
    return path
