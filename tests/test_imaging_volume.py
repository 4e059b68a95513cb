"""Reading whole studies: NIfTI volumes, DICOM series and zips of them (imaging.volume)."""
from __future__ import annotations

import gzip
import io
import os
import stat
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, MRImageStorage

from imaging.errors import ImageReadError
from imaging.dicom_terms import CODED_KEYS, sequence_kind
from imaging.volume import Reorientation, StudyLimits, read_nifti, read_study, reorientation_for, zip_members
from tests.conftest import dicom_dataset
from tests.data_gate import data_dir, real_data

DATA = data_dir()

# A semi-coronal sacroiliac affine as the scanner wrote it (axis 1 points superior and anterior,
# slightly more superior), and one of the same protocol that points slightly more anterior.
SEMI_CORONAL_MORE_SUPERIOR = np.array([[-0.6, 0.0, -0.01, 84.6], [0.0, 0.33, -2.76, -103.3],
                                       [0.0, 0.5, 1.81, -232.3], [0, 0, 0, 1]])
SEMI_CORONAL_MORE_ANTERIOR = np.array([[-0.6, -0.01, -0.07, 117.2], [0.0, 0.45, -2.14, -117.4],
                                       [-0.02, 0.39, 2.51, -159.6], [0, 0, 0, 1]])


def marked_volume(shape=(40, 30, 6)) -> np.ndarray:
    """A stored (i, j, k) volume with one bright voxel at high i, high j and k = 1."""
    vol = np.zeros(shape, np.float32)
    vol[shape[0] - 3, shape[1] - 4, 1] = 100.0
    return vol


def nifti_bytes(vol: np.ndarray, affine: np.ndarray, gz: bool = True) -> bytes:
    raw = nib.Nifti1Image(vol, affine).to_bytes()
    return gzip.compress(raw) if gz else raw


def marker(volume) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(volume.voxels), volume.voxels.shape))


@pytest.mark.parametrize("affine", [SEMI_CORONAL_MORE_SUPERIOR, SEMI_CORONAL_MORE_ANTERIOR])
def test_semi_coronal_volumes_are_shown_superior_up_and_patient_right_on_the_left(affine):
    volume = read_nifti(nifti_bytes(marked_volume(), affine)).volumes[0]
    assert volume.voxels.shape == (6, 30, 40)
    # The marker sits at high j (superior) and high i (patient's left: the affine's x is negative).
    assert marker(volume) == (1, 3, 37)
    assert volume.spacing_mm == pytest.approx(tuple(float(np.linalg.norm(affine[:3, a])) for a in (2, 1, 0)))


def test_the_same_anatomy_stored_in_any_axis_order_reads_the_same():
    """A RAS coronal grid, then the same voxels stored with every axis reversed and with the affine
    rewritten to match: the canonical volume is identical."""
    vol = np.random.default_rng(0).random((20, 5, 16)).astype(np.float32)   # x (R+), y (A+, slices), z (S+)
    ras = np.diag([0.5, 3.0, 0.5, 1.0])
    flipped = vol[::-1, ::-1, ::-1]
    affine = ras.copy()
    affine[:3, :3] = -ras[:3, :3]
    affine[:3, 3] = ras[:3, :3] @ (np.array(vol.shape) - 1)
    a = read_nifti(nifti_bytes(vol, ras)).volumes[0]
    b = read_nifti(nifti_bytes(np.ascontiguousarray(flipped), affine)).volumes[0]
    assert a.plane == b.plane == "coronal"
    np.testing.assert_array_equal(a.voxels, b.voxels)
    # Coronal: anterior slice first, superior row first, patient's right (x high) column first.
    np.testing.assert_array_equal(a.voxels[0], vol[::-1, -1, ::-1].T)


def test_reorientation_round_trips_and_masks_go_back_on_the_input_grid():
    stored = marked_volume()
    volume = read_nifti(nifti_bytes(stored, SEMI_CORONAL_MORE_SUPERIOR)).volumes[0]
    mask = volume.voxels > 50
    back = nib.Nifti1Image.from_bytes(gzip.decompress(volume.nifti_bytes(mask)))
    np.testing.assert_array_equal(np.asarray(back.dataobj) > 0, stored > 50)
    np.testing.assert_allclose(back.affine, SEMI_CORONAL_MORE_SUPERIOR, atol=1e-4)
    r = Reorientation((2, 0, 1), (True, False, True))
    arr = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(r.to_stored(r.to_canonical(arr)), arr)


def test_volume_in_millilitres():
    affine = np.diag([0.5, 0.5, 4.0, 1.0])   # axial: 1 mm^3 voxels
    volume = read_nifti(nifti_bytes(np.zeros((10, 10, 5), np.float32), affine)).volumes[0]
    assert volume.voxel_ml == pytest.approx(0.001)
    mask = np.zeros(volume.voxels.shape, bool)
    mask[:2] = True                           # two slices of 100 voxels
    assert volume.volume_ml(mask) == pytest.approx(0.2)


def test_corrupt_truncated_and_oversized_volumes_are_refused():
    good = nifti_bytes(np.ones((20, 20, 5), np.float32), np.eye(4), gz=False)
    with pytest.raises(ImageReadError, match="truncated"):
        read_nifti(good[:-100])
    with pytest.raises(ImageReadError, match="corrupt"):
        read_nifti(gzip.compress(good)[:60] + b"\x00" * 50)
    with pytest.raises(ImageReadError):
        read_nifti(b"\x1f\x8b" + os.urandom(400))
    # A header announcing 2 G voxels is refused before anything is inflated.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 2000, 500))
    hdr.set_data_dtype(np.uint8)
    bomb = gzip.compress(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000)
    with pytest.raises(ImageReadError) as err:
        read_nifti(bomb)
    assert err.value.status == 413
    with pytest.raises(ImageReadError, match="3D"):
        read_nifti(nifti_bytes(np.ones((4, 4, 3, 2), np.float32), np.eye(4)))


# -- DICOM series ------------------------------------------------------------------
def dicom_slice(k: int, *, position=None, orientation=(1, 0, 0, 0, 0.62, -0.785), shape=(32, 24), series="1.2.3",
                description="CORO  Stir_FIL", spacing=(0.9, 0.8), scanning=("SE", "IR"), inversion=140) -> bytes:
    ds = dicom_dataset(MRImageStorage)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", series, description
    ds.PatientName, ds.PatientID = "Gonzalez^Maria", "MRN5544"
    ds.InstitutionName, ds.StudyDescription = "St Elsewhere Hospital", "Pelvis Maria Gonzalez 1970-01-01"
    ds.ScanningSequence, ds.InversionTime = list(scanning), inversion
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = list(position if position is not None else (normal * 4.0 * k + [-100, -10, -200]))
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.full(shape, 10 * (k + 1), np.uint16)
    pixels[2, 20] = 4000                               # top row, towards the patient's left
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_a_shuffled_series_is_ordered_by_position_with_its_spacing():
    files = [dicom_slice(k) for k in range(7)]
    shuffled = [files[i] for i in (3, 0, 6, 1, 5, 2, 4)]
    study = read_study(shuffled)
    (volume,) = study.volumes
    assert study.kind == "dicom" and volume.sequence == "STIR"
    assert volume.voxels.shape == (7, 32, 24)
    means = [float(np.median(volume.voxels[k])) for k in range(7)]
    assert means == sorted(means) or means == sorted(means, reverse=True)
    assert volume.spacing_mm == pytest.approx((4.0, 0.9, 0.8), rel=1e-3)
    assert volume.voxels[:, 2, 20].min() == 4000            # patient's left stays on the image's right
    assert np.argmax(volume.voxels[0].max(axis=0)) == 20


def test_stir_and_t1_series_in_one_zip_become_two_volumes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(4):
            zf.writestr(f"study/STIR/{k}.dcm", dicom_slice(k))
            zf.writestr(f"study/T1/{k}.dcm", dicom_slice(k, series="1.2.4", description="CORO T1", scanning=("SE",),
                                                         inversion=None))
        zf.writestr("study/DICOMDIR", b"")
    study = read_study([buf.getvalue()])
    assert sorted(v.sequence for v in study.volumes) == ["STIR", "T1"]
    assert study.by_sequence("T1").voxels.shape == (4, 32, 24)


@pytest.mark.parametrize("bad, message", [
    ([dicom_slice(0), dicom_slice(1, shape=(30, 24)), dicom_slice(2)], "mixes slice sizes"),
    ([dicom_slice(0), dicom_slice(1, orientation=(1, 0, 0, 0, 1, 0)), dicom_slice(2)], "mixes slice orientations"),
    ([dicom_slice(0), dicom_slice(1), dicom_slice(1)], "same position"),
    ([dicom_slice(0), dicom_slice(1), dicom_slice(4)], "evenly spaced"),
    ([dicom_slice(0), dicom_slice(1, spacing=(0.5, 0.5))], "pixel spacings"),
])
def test_inconsistent_series_are_refused_with_a_reason(bad, message):
    with pytest.raises(ImageReadError, match=message):
        read_study(bad)


def test_series_limits_are_checked_before_pixels_are_read():
    files = [dicom_slice(k) for k in range(5)]
    with pytest.raises(ImageReadError) as err:
        read_study(files, StudyLimits(max_slices=4))
    assert err.value.status == 413 and "5 slices" in err.value.message
    with pytest.raises(ImageReadError, match="voxels"):
        read_study(files, StudyLimits(max_voxels=1000))


def test_no_identifier_or_free_text_is_kept():
    study = read_study([dicom_slice(k) for k in range(3)])
    text = repr(study.volumes[0].meta).lower()
    for value in ("gonzalez", "maria", "5544", "elsewhere", "1970", "stir_fil"):
        assert value not in text
    assert set(study.volumes[0].meta) - CODED_KEYS <= {"format", "slices", "rows", "cols", "spacing_mm", "plane"}
    assert study.volumes[0].meta["sequence"] == "STIR" and study.volumes[0].meta["modality"] == "MR"


def _deflated(blob: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(blob))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_deflated_slices_are_inflated_once_within_the_study_limit(monkeypatch):
    files = [dicom_slice(k) for k in range(3)]
    deflated = [_deflated(f) for f in files]
    plain = read_study(files).volumes[0]
    monkeypatch.setattr(zlib, "decompress", lambda *a, **k: pytest.fail("pydicom inflated a dataset again"))
    np.testing.assert_array_equal(read_study(deflated).volumes[0].voxels, plain.voxels)
    with pytest.raises(ImageReadError) as err:                   # a file that inflates past the study's byte limit
        read_study(deflated[:1], StudyLimits(max_bytes=len(files[0]) - 1))
    assert err.value.status == 413 and "inflates to more than" in err.value.message


def test_sequence_kind_from_coded_parameters():
    read = lambda blob: pydicom.dcmread(io.BytesIO(blob))  # noqa: E731
    assert sequence_kind(read(dicom_slice(0, description="", scanning=("SE", "IR"), inversion=150))) == "STIR"
    assert sequence_kind(read(dicom_slice(0, description="cor t1 tse", scanning=("SE",), inversion=None))) == "T1"
    assert sequence_kind(read(dicom_slice(0, description="localiser", scanning=("GR",), inversion=None))) is None


# -- zip safety --------------------------------------------------------------------
def zip_of(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("archive, message", [
    (lambda: zip_of({"../../etc/cron.d/x": dicom_slice(0)}), "unsafe path"),
    (lambda: zip_of({"/abs/x.dcm": dicom_slice(0)}), "unsafe path"),
    (lambda: zip_of({"a.dcm": dicom_slice(0)}, symlink="link.dcm"), "symbolic link"),
    (lambda: zip_of({"inner.zip": zip_of({"a.dcm": dicom_slice(0)})}), "another zip"),
    (lambda: zip_of({"zeros.dcm": b"\x00" * (30 * 2**20)}), "inflates far beyond"),
    (lambda: b"PK\x03\x04" + os.urandom(200), "corrupt"),
])
def test_unsafe_zips_are_refused(archive, message):
    with pytest.raises(ImageReadError, match=message):
        zip_members(archive())


def test_a_zip_larger_than_the_limit_is_refused_from_its_directory():
    archive = zip_of({f"{k}.dcm": dicom_slice(k) for k in range(3)})
    with pytest.raises(ImageReadError) as err:
        zip_members(archive, StudyLimits(max_bytes=2000))
    assert err.value.status == 413


def test_reorientation_rejects_a_degenerate_affine():
    with pytest.raises(ImageReadError, match="geometry"):
        reorientation_for(np.diag([1.0, 0.0, 1.0, 1.0]), (4, 4, 4))


# -- real studies ------------------------------------------------------------------
SIJ = DATA / "sij_mri_nifti"
needs_sij = real_data(SIJ)


@needs_sij
def test_real_sacroiliac_studies_read_upright_with_masks_on_their_grid():
    """Every labelled case: image and disease-region mask read onto the same canonical grid, and the
    region's upper half holds the sacral ala (mask mass in the top rows), whatever the affine's codes."""
    for mask_path in sorted((SIJ / "disease_region").glob("*.nii.gz")):
        case = mask_path.name.split("_")[0]
        image_path = next(SIJ.glob(f"images/*/{case}_T1W.nii.gz"))
        study = read_study([image_path.read_bytes(), ], names=[image_path.name])
        mask = read_nifti(mask_path.read_bytes()).volumes[0]
        image = study.volumes[0]
        assert image.sequence == "T1" and image.voxels.shape == mask.voxels.shape == (25, 336, 336)
        assert image.spacing_mm == pytest.approx((3.3, 0.595, 0.595), abs=0.01)
        rows = np.nonzero(mask.voxels.sum(axis=(0, 2)))[0]
        # The pelvis below the sacrum is never in the region: the region lies in the upper image.
        assert rows.mean() < 336 * 0.6, case


@real_data(DATA / "sij_mri_dicom" / "patient1")
def test_real_dicom_study_reads_as_stir_and_t1_volumes():
    files = sorted((DATA / "sij_mri_dicom" / "patient1").glob("*.dcm"))
    study = read_study([f.read_bytes() for f in files])
    assert sorted(v.sequence for v in study.volumes) == ["STIR", "T1"]
    for volume in study.volumes:
        assert volume.voxels.shape == (15, 256, 256)
        assert volume.spacing_mm == pytest.approx((5.0, 0.977, 0.977), abs=0.01)
