"""Generated demo data sets, written as real files with a Decathlon-style ``dataset.json``.

No public data set can be downloaded in every environment, so the bundle runs out of the box on
generated data, read through the very loaders real data goes through (``LoadImaged``). Both sets
use the Medical Segmentation Decathlon layout (also what :func:`qddens_monai.data.prepare_drive`
writes for DRIVE), so ``imagesTs/*`` finds the test images of every set::

    DIR/dataset.json      {"training": [{"image": "./imagesTr/...", "label": "./labelsTr/...", "mask": ...}],
                           "test": [...], "labels", "modality", "numTraining", "numTest", "tensorImageSize", ...}
    DIR/imagesTr/  DIR/labelsTr/  [DIR/masksTr/]      training cases (same file name in each folder)
    DIR/imagesTs/  DIR/labelsTs/  [DIR/masksTs/]      test cases (labeled: the demo can be evaluated)

- **2D** (:func:`write_demo_2d`): fundus-like images from
  :func:`qddens_monai.data.vessels.create_vessel_image_2d`, ``vessel_{split}_{i:03d}.png``:
  image RGB ``uint8``; label and FOV mask 8-bit grey with 0 = background / outside and 255 = vessel /
  inside (the DRIVE convention: viewable, and one pipeline for demo and real data;
  :func:`qddens_monai.data.label_transform` maps both 0/255 and 0/1 to 0/1 after ``LoadImaged``).
  With ``file_format="nifti"``: ``.nii.gz`` files holding the green channel (the channel with the
  best vessel contrast; an RGB 2D NIfTI would load as ``(3, x, y, 1)``, i.e. 3D) and 0/1
  label / mask, all ``(x, y)`` equal to what ``PILReader`` gives for the PNGs.
- **3D** (:func:`write_demo_3d`): spheres from :func:`monai.data.synthetic.create_test_image_3d`,
  ``spheres_{split}_{i:03d}.nii.gz`` with a non-identity affine (spacing 1.5 x 1.5 x 2 mm, origin
  (-48, -48, -64)); ``uint8`` labels ``0..num_classes-1``; MR-like ``float32`` images in [0, 1] or
  CT-like ``int16`` Hounsfield units; ``difficulty`` > 0 adds smaller spheres, overlapping noise and a bias field.

:func:`ensure_demo_data` is the bundle's entry point: it generates a set only where there is none.
Every output is deterministic for a seed, and item ``i`` depends only on the seed and ``i``.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .datalist import write_datalist
from .vessels import create_vessel_image_2d

__all__ = ["write_demo_2d", "write_demo_3d", "ensure_demo_data", "find_images", "DEMO_DEFAULTS"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Demo sizes by spatial_dims: they generate in seconds and train in minutes on two CPU cores.
DEMO_DEFAULTS = {2: {"num_train": 16, "num_test": 4, "size": 128}, 3: {"num_train": 10, "num_test": 2, "size": 64}}


_FOLDERS = {"image": "images", "label": "labels", "mask": "masks"}


def _rng_seed(seed: int, stream: int, index: int) -> int:
    """An independent 32-bit seed for item ``index`` of ``stream`` (0: training, 1: test)."""
    return int(np.random.SeedSequence([int(seed), stream, index]).generate_state(1)[0])


def _msd_dirs(out: Path, split: str, keys: Sequence[str]) -> dict[str, Path]:
    suffix = "Tr" if split == "training" else "Ts"
    dirs = {k: out / f"{_FOLDERS[k]}{suffix}" for k in keys}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _bias_field(image: np.ndarray, amplitude: float, rs: np.random.RandomState) -> np.ndarray:
    """``image`` times a smooth random field ``1 + amplitude * f`` (``f`` in about [-1, 1]), rescaled to [0, 1]."""
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in image.shape], indexing="ij")
    field = np.zeros(image.shape)
    for _ in range(3):  # a few random low-frequency plane waves
        direction = rs.normal(size=image.ndim)
        direction /= np.linalg.norm(direction) + 1e-12
        field += np.cos(np.pi * rs.uniform(0.5, 1.5) * sum(g * v for g, v in zip(grid, direction)) + rs.uniform(0, 6.3))
    out = image * (1.0 + amplitude * field / 3.0)
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-12)


def write_demo_3d(
    out_dir: PathLike,
    num_train: int = 10,
    num_test: int = 2,
    size: int = 64,
    seed: int = 0,
    num_classes: int = 2,
    modality: str = "MR",
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    origin: Sequence[float] = (-48.0, -48.0, -64.0),
    difficulty: float = 0.0,
) -> str:
    """Write a 3D spheres set (NIfTI, MSD layout) into ``out_dir``; return the path of its dataset.json.

    Args:
        out_dir: target folder (created).
        num_train, num_test: number of training and (labeled) test volumes.
        size: edge length of the cubic volumes.
        seed: random seed.
        num_classes: classes including background: 2 gives labels 0/1; ``n`` gives each sphere a random
            class in ``1..n-1`` (``create_test_image_3d(num_seg_classes=n - 1)``).
        modality: ``"MR"`` (``float32`` in [0, 1]) or ``"CT"`` (``int16`` Hounsfield units in
            -100..150, inside the default CT window of :func:`qddens_monai.data.intensity_normalization`).
        spacing, origin: voxel size and position of voxel 0 (mm), written as qform and sform.
        difficulty: 0 (default: the plain ``create_test_image_3d`` spheres, bright over weak noise) .. 1:
            more and smaller spheres, noise overlapping their intensities, and a smooth multiplicative
            intensity bias (uneven coil sensitivity), for benchmarks. ``0`` draws exactly what it always did.
    """
    import nibabel as nib
    from monai.data.synthetic import create_test_image_3d

    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}.")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}.")
    d = float(difficulty)
    modality = modality.upper()
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', got {modality!r}.")
    out = Path(out_dir)
    affine = np.diag([float(v) for v in spacing] + [1.0])
    affine[:3, 3] = [float(v) for v in origin]
    lists: dict[str, list[dict]] = {"training": [], "test": []}
    for stream, (split, count) in enumerate((("training", num_train), ("test", num_test))):
        dirs = _msd_dirs(out, split, ("image", "label"))
        for i in range(count):
            rs = np.random.RandomState(_rng_seed(seed, stream, i))
            rad_min = 3 if d < 0.5 else 2
            image, label = create_test_image_3d(
                size,
                size,
                size,
                num_objs=6 + round(6 * d),
                rad_min=rad_min,
                rad_max=max(rad_min + 1, round(max(5, size // 6) * (1.0 - 0.3 * d))),
                noise_max=0.4 + 0.6 * d,
                num_seg_classes=num_classes - 1,
                random_state=rs,
            )
            if d > 0:
                image = _bias_field(image, 0.6 * d, rs)
            data = np.rint(-100.0 + 250.0 * image).astype(np.int16) if modality == "CT" else image.astype(np.float32)
            if num_classes == 2:
                label = label > 0
            name = f"spheres_{split}_{i:03d}.nii.gz"
            entry = {}
            for key, array in (("image", data), ("label", label.astype(np.uint8))):
                img = nib.Nifti1Image(array, affine)
                img.set_qform(affine, code=1)  # scanner coordinates in both forms: every reader agrees
                img.set_sform(affine, code=1)
                img.header.set_xyzt_units("mm")
                nib.save(img, os.fspath(dirs[key] / name))
                entry[key] = os.fspath(dirs[key] / name)
            lists[split].append(entry)
    labels = {"0": "background"}
    labels.update({str(c): "foreground" if num_classes == 2 else f"class_{c}" for c in range(1, num_classes)})
    return write_datalist(
        os.fspath(out / "dataset.json"),
        lists["training"],
        lists["test"],
        name="qddens-monai demo spheres (generated)",
        description="monai.data.synthetic 3D volumes with sphere labels, generated by qddens_monai.data; "
        "test cases are labeled.",
        reference="qddens_monai.data.demo.write_demo_3d",
        license="CC0 (generated data)",
        tensorImageSize="3D",
        modality={"0": modality},
        labels=labels,
        generator={
            "spatial_dims": 3,
            "seed": seed,
            "size": size,
            "num_classes": num_classes,
            "modality": modality,
            **({"difficulty": d} if d > 0 else {}),
        },
    )


def write_demo_2d(
    out_dir: PathLike,
    num_train: int = 16,
    num_test: int = 4,
    size: Union[int, Sequence[int]] = 128,
    seed: int = 0,
    difficulty: float = 0.0,
    file_format: str = "png",
) -> str:
    """Write a 2D fundus-like vessel set into ``out_dir``; return the path of its dataset.json.

    Args:
        out_dir: target folder (created).
        num_train, num_test: number of training and (labeled) test images.
        size: ``int`` or ``(height, width)``; ``(584, 565)`` gives DRIVE-size images.
        seed: random seed.
        difficulty: 0 (easy) .. 1 (thin, faint vessels, noisy), see :mod:`qddens_monai.data.vessels`.
        file_format: ``"png"`` (RGB image, 0/255 label and mask) or ``"nifti"`` (see the module doc).
    """
    from PIL import Image

    if file_format not in ("png", "nifti"):
        raise ValueError(f"file_format must be 'png' or 'nifti', got {file_format!r}.")
    out = Path(out_dir)
    ext = ".png" if file_format == "png" else ".nii.gz"
    lists: dict[str, list[dict]] = {"training": [], "test": []}
    for stream, (split, count) in enumerate((("training", num_train), ("test", num_test))):
        dirs = _msd_dirs(out, split, ("image", "label", "mask"))
        for i in range(count):
            image, label, fov = create_vessel_image_2d(size, difficulty, random_state=_rng_seed(seed, stream, i))
            name = f"vessel_{split}_{i:03d}{ext}"
            if file_format == "png":
                Image.fromarray(image, mode="RGB").save(dirs["image"] / name)
                Image.fromarray(label * np.uint8(255)).save(dirs["label"] / name)
                Image.fromarray(fov * np.uint8(255)).save(dirs["mask"] / name)
            else:
                import nibabel as nib

                # (row, col) -> (x, y): the arrays PILReader gives for the PNG versions
                for key, array in (("image", image[..., 1]), ("label", label), ("mask", fov)):
                    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.T), np.eye(4)), os.fspath(dirs[key] / name))
            lists[split].append({k: os.fspath(d / name) for k, d in dirs.items()})
    png = file_format == "png"
    return write_datalist(
        os.fspath(out / "dataset.json"),
        lists["training"],
        lists["test"],
        name="qddens-monai demo vessels (generated)",
        description="Fundus-like images with vessel labels and FOV masks, generated by qddens_monai.data; "
        + ("labels and masks are 0/255 PNG" if png else "green channel; labels and masks are 0/1")
        + "; test cases are labeled; evaluate inside the FOV mask.",
        reference="qddens_monai.data.demo.write_demo_2d",
        license="CC0 (generated data)",
        tensorImageSize="2D",
        modality={"0": "R", "1": "G", "2": "B"} if png else {"0": "G"},
        labels={"0": "background", "1": "vessel"},
        generator={
            "spatial_dims": 2,
            "seed": seed,
            "size": size if np.isscalar(size) else list(size),
            "difficulty": difficulty,
            "file_format": file_format,
        },
    )


def ensure_demo_data(
    dataset_dir: PathLike,
    spatial_dims: int = 2,
    num_train: Optional[int] = None,
    num_test: Optional[int] = None,
    size: Optional[int] = None,
    seed: int = 0,
    demo_dir: Optional[PathLike] = None,
    **kwargs,
) -> str:
    """The ``dataset.json`` of ``dataset_dir``, generating the demo set there when the folder is empty.

    - ``dataset_dir/dataset.json`` exists: nothing is touched (real or earlier generated data).
    - ``dataset_dir`` is missing or empty: the demo set is generated (:func:`write_demo_2d` or
      :func:`write_demo_3d`, defaults in :data:`DEMO_DEFAULTS`), and this is logged and printed.
    - ``dataset_dir`` holds files but no ``dataset.json``: that is the user's data without a
      datalist, so ``FileNotFoundError``; it is never mixed with demo data.
    - with ``demo_dir`` given, demo data is generated only there: a ``dataset_dir`` elsewhere that is
      missing or empty is a ``FileNotFoundError`` (a mistyped path must not silently train on demo data).

    The set is written into a temporary sibling folder and moved into place when complete, so an
    interrupted run leaves no half-written set and concurrent callers (one per GPU) are safe.

    Args:
        dataset_dir: the data folder (a bundle's ``dataset_dir``).
        spatial_dims: 2 (fundus-like vessels, PNG) or 3 (spheres, NIfTI).
        num_train, num_test, size: ``None`` takes :data:`DEMO_DEFAULTS`.
        seed: random seed; the same arguments give the same files.
        demo_dir: the one folder where demo data may be generated (the bundle's ``demo_dir``);
            ``None``: any empty ``dataset_dir``.
        kwargs: more generator options (``difficulty``, ``file_format``; ``num_classes``, ``modality``).

    Returns:
        the path of ``dataset_dir/dataset.json``.
    """
    import torch.distributed as dist

    from ..distributed import rank_and_world_size

    out = Path(dataset_dir).expanduser()
    if demo_dir is not None and not (out / "dataset.json").is_file():
        if os.path.realpath(out) != os.path.realpath(Path(demo_dir).expanduser()):
            if not out.exists() or (out.is_dir() and not any(not p.name.startswith(".") for p in out.iterdir())):
                raise FileNotFoundError(
                    f"dataset_dir {out} {'does not exist' if not out.exists() else 'is empty'}: point it at a folder "
                    f"with a dataset.json (demo data is generated only into {demo_dir})."
                )
    rank, world_size = rank_and_world_size()
    if world_size > 1:
        # under torchrun one process writes the demo set and the others wait for it (the atomic move
        # below keeps uncoordinated concurrent callers safe as well)
        if rank == 0:
            try:
                return _ensure_demo_data(out, spatial_dims, num_train, num_test, size, seed, kwargs)
            finally:
                dist.barrier()
        dist.barrier()
    return _ensure_demo_data(out, spatial_dims, num_train, num_test, size, seed, kwargs)


def _ensure_demo_data(
    out: Path,
    spatial_dims: int,
    num_train: Optional[int],
    num_test: Optional[int],
    size: Optional[int],
    seed: int,
    kwargs: dict,
) -> str:
    datalist = out / "dataset.json"
    if datalist.is_file():
        return str(datalist)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"dataset_dir {out} is a file, not a folder.")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise FileNotFoundError(
            f"dataset_dir {out} holds files but no dataset.json: write a Medical Segmentation Decathlon style "
            "datalist there (for DRIVE: `qddens-monai prepare-drive PATH`), or point dataset_dir at an empty "
            "folder to get the generated demo data."
        )
    if spatial_dims not in DEMO_DEFAULTS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    kw = {k: v for k, v in {"num_train": num_train, "num_test": num_test, "size": size}.items() if v is not None}
    kw = {**DEMO_DEFAULTS[spatial_dims], **kw, **kwargs}
    message = (
        f"dataset_dir {out} holds no data: generating the {spatial_dims}D demo set there "
        f"({kw['num_train']} training and {kw['num_test']} test cases of size {kw['size']}, seed {seed}). "
        "Point dataset_dir at real data to train on it."
    )
    logger.warning(message)
    print(message, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.generating-", dir=out.parent))
    try:
        (write_demo_2d if spatial_dims == 2 else write_demo_3d)(tmp, seed=seed, **kw)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is not
        try:
            os.replace(tmp, out)  # atomic; on POSIX it also replaces an empty folder
        except OSError:
            if not datalist.is_file():  # not beaten by a concurrent caller: move the files in, the json last
                out.mkdir(parents=True, exist_ok=True)
                for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "dataset.json"):
                    shutil.move(os.fspath(entry), os.fspath(out / entry.name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(datalist)


def find_images(
    dataset_dir: PathLike,
    pattern: str = "imagesTs/*",
    spatial_dims: int = 2,
    size: Optional[int] = None,
    demo_dir: Optional[PathLike] = None,
) -> list[dict]:
    """``[{"image": path}, ...]`` of the files matching ``dataset_dir/pattern``, sorted, for inference.

    An empty ``dataset_dir`` gets the demo set first (see :func:`ensure_demo_data`; with ``demo_dir``
    only when it is that folder, otherwise it is an error). A DICOM series folder matched by
    ``pattern`` is one image (MONAI's ``LoadImage`` reads a folder as a series).
    """
    out = Path(dataset_dir)
    if not out.is_dir() or not any(out.iterdir()):
        ensure_demo_data(out, spatial_dims=spatial_dims, size=size, demo_dir=demo_dir)
    files = sorted(f for f in glob.glob(str(out / pattern)) if not os.path.basename(f).startswith("."))
    if not files:
        raise FileNotFoundError(f"no image matches {pattern!r} in {out}; set image_glob to where your images are.")
    return [{"image": f} for f in files]
