"""DICOM series written with pydicom and read back through MONAI's ITKReader and PydicomReader."""

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from qddens_monai.data import check_datalist, dicom_series_in, write_dicom_series

SPACING, ORIGIN = (0.7, 0.8, 2.5), (-10.0, 20.0, 30.0)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    rng = np.random.default_rng(0)
    volume = rng.uniform(-1000, 1500, (20, 24, 6)).astype(np.float32)  # (x, y, z), non-square in-plane
    volume[2, 3, 4] = 777.0  # a landmark voxel to check the axis order
    out = tmp_path_factory.mktemp("dcm") / "ct"
    files = write_dicom_series(volume, SPACING, ORIGIN, str(out), patient_id="P1")
    return volume, out, files


def test_written_files_are_a_ct_series(series):
    volume, out, files = series
    assert [Path(f).name for f in files] == [f"slice_{k:04d}.dcm" for k in range(6)]
    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and first.Modality == "CT"
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (first.Rows, first.Columns) == (24, 20)  # rows along y, columns along x
    assert [float(v) for v in first.PixelSpacing] == [0.8, 0.7]  # (row spacing, column spacing)
    assert float(first.SliceThickness) == 2.5 and list(first.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    assert [float(s.ImagePositionPatient[2]) for s in slices] == [30.0 + 2.5 * k for k in range(6)]
    assert [int(s.InstanceNumber) for s in slices] == list(range(1, 7))
    assert first.pixel_array.dtype == np.int16 and float(first.RescaleIntercept) == -1024.0
    assert len({s.SeriesInstanceUID for s in slices}) == 1 and len({s.SOPInstanceUID for s in slices}) == 6
    assert dicom_series_in(str(out)) == {str(first.SeriesInstanceUID): 6}


@pytest.mark.parametrize("reader", ["ITKReader", "PydicomReader"])
def test_monai_reads_the_series_back(series, reader):
    volume, out, _ = series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SWIG / nvImageCodec notices
        data = Compose([LoadImaged("image", reader=reader), EnsureChannelFirstd("image")])({"image": str(out)})
    image = data["image"]
    assert image.shape == (1, 20, 24, 6)
    assert np.abs(image[0].numpy() - volume).max() <= 0.5  # int16 storage rounding, slope 1
    assert float(image[0, 2, 3, 4]) == 777.0
    # MONAI reports RAS: x and y of the DICOM (LPS) frame are flipped
    expected = np.diag([-0.7, -0.8, 2.5, 1.0])
    expected[:3, 3] = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(np.asarray(image.affine), expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(image.pixdim[:3]), SPACING, atol=1e-4)


def test_rescale_slope_rounding_and_determinism(tmp_path):
    volume = np.linspace(-1000, 3000, 8 * 8 * 3).reshape(8, 8, 3)
    a = write_dicom_series(volume, out_dir=str(tmp_path / "a"), rescale_slope=0.5, rescale_intercept=-1000.0)
    b = write_dicom_series(volume, out_dir=str(tmp_path / "b"), rescale_slope=0.5, rescale_intercept=-1000.0)
    assert [Path(f).read_bytes() for f in a] == [Path(f).read_bytes() for f in b]  # same UIDs, same bytes
    data = LoadImaged("image", reader="ITKReader", ensure_channel_first=True)({"image": str(tmp_path / "a")})
    assert np.abs(data["image"][0].numpy() - volume).max() <= 0.25  # half a slope step
    check_datalist([{"image": str(tmp_path / "a")}], spatial_dims=3, in_channels=1)
    with pytest.raises(ValueError, match="do not fit int16"):
        write_dicom_series(volume * 100, out_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="3D"):
        write_dicom_series(volume[..., 0], out_dir=str(tmp_path / "d"))
