"""Read a whole study: a NIfTI volume, a DICOM series (several files or one zip), into oriented volumes.

A study holds one volume per series (for the sacroiliac task a STIR and a T1 series of one session).
Each volume keeps the scanner's intensities (rescaled, never windowed per slice, so that a threshold
means the same on every slice), its voxel size in mm (so that volumes are in mL), and the mapping back
to the input grid (so that a mask can be returned as a NIfTI volume the clinic's viewer overlays on
the original).

Orientation is made canonical as radiologists read: superior at the top of coronal and sagittal
slices, anterior at the top of axial ones, the patient's right on the image's left, anterior on the
left of sagittal slices. It is read from the affine's axis directions, not from nearest-axis codes:
semi-coronal sacroiliac planes lie about half-way between coronal and axial, and
``nibabel.as_closest_canonical`` then picks a different axis for different studies of the same
protocol. Where the rule of the nearest plane is applied to such an oblique plane, the coronal and
axial rules agree as long as the in-plane vertical axis points superior and anterior together.

Every limit (bytes, files, slices, voxels, inflated sizes) is checked before pixel data is decoded,
and no identifier or free text is kept: only the fixed vocabulary of coded facts of imaging.dicom_terms.

nibabel reads NIfTI and pydicom reads DICOM; what is written here is what they do not do: the study
assembly (grouping, ordering and checking slices), safe zip reading, and the canonical orientation.
"""
from __future__ import annotations

import gzip
import io
import json
import posixpath
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import nibabel as nib
import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

# imaging.dicom also keeps header values out of the log (pydicom's validation messages are off).
from imaging.dicom import dicom_stream
from imaging.dicom_terms import coded_facts, first_float, optional_value, sequence_from_text, sequence_kind
from imaging.errors import ImageReadError, size_text

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540


@dataclass(frozen=True)
class StudyLimits:
    """What one uploaded study may hold; checked before any pixel data is decoded."""

    max_bytes: int = 256 * 2**20          # inflated bytes of the whole study
    max_files: int = 2000                 # files in a zip or a multi-file upload
    max_slices: int = 400                 # slices of one series
    max_voxels: int = 80_000_000          # voxels of one series
    max_series: int = 4                   # series in one study
    max_ratio: int = 500                  # inflated / compressed size of one zip member (deflate tops out near 1000)


@dataclass(frozen=True)
class Reorientation:
    """How a stored array (i, j, k) becomes the canonical (slice, row, column) volume: a transpose
    by `axes` (slice axis, vertical axis, horizontal axis of the stored array), then the flips."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def to_canonical(self, stored: np.ndarray) -> np.ndarray:
        out = np.transpose(stored, self.axes)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out)

    def to_stored(self, canonical: np.ndarray) -> np.ndarray:
        out = canonical
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.axes)))


@dataclass(frozen=True, eq=False)
class Volume:
    """One series as a canonical volume."""

    voxels: np.ndarray                    # float32 (slices, rows, cols), the scanner's intensities
    spacing_mm: tuple[float, float, float]  # (between slices, between rows, between columns)
    plane: str                            # "coronal" | "sagittal" | "axial" (nearest plane of the slices)
    sequence: str | None                  # coded kind: "STIR" | "T1" | "T2" | None when not known
    affine: np.ndarray                    # 4x4 RAS affine of the stored (input) grid
    reorientation: Reorientation
    meta: dict[str, Any] = field(default_factory=dict)   # coded, non-identifying facts only

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def volume_ml(self, mask: np.ndarray) -> float:
        """Volume of a canonical-grid mask in millilitres."""
        return float(np.count_nonzero(mask)) * self.voxel_ml

    def nifti_bytes(self, canonical: np.ndarray) -> bytes:
        """A canonical-grid array (a mask) as a gzipped NIfTI on the input's grid and affine."""
        stored = self.reorientation.to_stored(np.asarray(canonical))
        image = nib.Nifti1Image(stored.astype(np.uint8 if stored.dtype == bool else stored.dtype), self.affine)
        image.header.set_xyzt_units("mm")
        return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


@dataclass(frozen=True, eq=False)
class Study:
    volumes: tuple[Volume, ...]
    kind: str                             # "nifti" | "dicom"

    def by_sequence(self, sequence: str) -> Volume | None:
        return next((v for v in self.volumes if v.sequence == sequence), None)


# -- orientation -------------------------------------------------------------------
def reorientation_for(affine: np.ndarray, shape: Sequence[int]) -> tuple[Reorientation, str]:
    """The canonical reading orientation of a stored grid, from its RAS affine (see the module doc)."""
    directions = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(directions, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(directions)):
        raise ImageReadError("The volume's geometry is invalid (a zero or non-finite voxel axis).", 400)
    unit = directions / spacing
    # The slice axis is the coarsest one; scanners store 2D acquisitions with slices last, so a tie
    # (an isotropic volume) keeps axis 2.
    slice_axis = 2 if spacing[2] >= spacing.max() * 0.9 else int(np.argmax(spacing))
    in_plane = [a for a in range(3) if a != slice_axis]
    normal = unit[:, slice_axis]
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    # RAS components: 0 = towards the patient's right, 1 = anterior, 2 = superior.
    vertical_component = 1 if plane == "axial" else 2
    vertical = max(in_plane, key=lambda a: abs(unit[vertical_component, a]))
    horizontal = in_plane[0] if vertical == in_plane[1] else in_plane[1]
    # Rows run downwards: superior (or anterior) at the top.
    flip_rows = unit[vertical_component, vertical] > 0
    # Columns run to the patient's left (axial, coronal) or posterior (sagittal).
    horizontal_component = 1 if plane == "sagittal" else 0
    flip_cols = unit[horizontal_component, horizontal] > 0
    # Slices run anterior to posterior (coronal), right to left (sagittal), inferior to superior (axial).
    if plane == "coronal":
        flip_slices = normal[1] > 0
    elif plane == "sagittal":
        flip_slices = normal[0] > 0
    else:
        flip_slices = normal[2] < 0
    if len(shape) != 3:
        raise ImageReadError("Expected a 3D volume.", 400)
    return Reorientation((slice_axis, vertical, horizontal), (bool(flip_slices), bool(flip_rows), bool(flip_cols))), plane


def _volume(stored: np.ndarray, affine: np.ndarray, sequence: str | None, meta: dict[str, Any]) -> Volume:
    reorientation, plane = reorientation_for(affine, stored.shape)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    voxels = reorientation.to_canonical(stored.astype(np.float32, copy=False))
    if not np.all(np.isfinite(voxels)):
        raise ImageReadError("The volume holds non-finite values (NaN or infinity).", 400)
    sl, row, col = (float(spacing[a]) for a in reorientation.axes)
    meta = dict(meta, slices=int(voxels.shape[0]), rows=int(voxels.shape[1]), cols=int(voxels.shape[2]),
                spacing_mm=[round(sl, 4), round(row, 4), round(col, 4)], plane=plane)
    return Volume(voxels, (sl, row, col), plane, sequence, np.asarray(affine, dtype=float), reorientation, meta)


def _check_series_size(shape: Sequence[int], limits: StudyLimits) -> None:
    slices = min(shape)
    voxels = int(np.prod([int(s) for s in shape], dtype=np.int64))
    if slices > limits.max_slices:
        raise ImageReadError(f"The series has {slices} slices; the limit is {limits.max_slices}.", 413)
    if voxels > limits.max_voxels:
        raise ImageReadError(f"The series has {voxels:,} voxels; the limit is {limits.max_voxels:,}.", 413)


# -- NIfTI -------------------------------------------------------------------------
def is_nifti(data: bytes) -> bool:
    head = _inflate(data, NIFTI2_HEADER_BYTES) if data[:2] == GZIP_MAGIC else data[:NIFTI2_HEADER_BYTES]
    if len(head) >= NIFTI1_HEADER_BYTES and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= NIFTI2_HEADER_BYTES and head[4:8] in (b"n+2\x00", b"ni2\x00")


def _inflate(data: bytes, max_out: int) -> bytes:
    """At most `max_out` bytes of a gzip stream, inflated once: a bomb never gets further than that."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, max_out)
    except zlib.error as exc:
        raise ImageReadError("The compressed volume is corrupt.", 400) from exc


def read_nifti(data: bytes, limits: StudyLimits = StudyLimits(), sequence: str | None = None) -> Study:
    """A NIfTI-1 or NIfTI-2 volume (optionally gzipped) as a one-volume study."""
    if data[:2] == GZIP_MAGIC:
        header = _inflate(data, NIFTI2_HEADER_BYTES)
        expected = _nifti_bytes_expected(header, limits)
        # No ratio test here: masks compress a thousandfold, and at most `expected` bytes (checked
        # against the voxel limit from the header) are ever inflated.
        if expected > limits.max_bytes:
            raise ImageReadError("The compressed volume inflates beyond the size limit.", 413)
        raw = _inflate(data, expected)
        if len(raw) < expected:
            raise ImageReadError("The volume is truncated: it holds fewer voxels than its header says.", 400)
        raw = raw[:expected]
    else:
        expected = _nifti_bytes_expected(data[:NIFTI2_HEADER_BYTES], limits)
        if len(data) < expected:
            raise ImageReadError("The volume is truncated: it holds fewer voxels than its header says.", 400)
        raw = data[:expected]
    try:
        image_class = nib.Nifti2Image if raw[4:8] in (b"n+2\x00", b"ni2\x00") else nib.Nifti1Image
        image = image_class.from_bytes(raw)
        stored = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:
        raise ImageReadError("The NIfTI volume could not be read: it may be corrupt or truncated.", 400) from exc
    if stored.ndim == 4 and stored.shape[3] == 1:
        stored = stored[..., 0]
    if stored.ndim != 3:
        raise ImageReadError(f"Expected one 3D volume; the NIfTI file holds a {stored.ndim}D array.", 400)
    affine = image.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise ImageReadError("The NIfTI volume has no valid orientation (affine).", 400)
    meta = {"format": "nifti", "modality": "MR"}
    return Study((_volume(stored, affine, sequence, meta),), "nifti")


def _nifti_bytes_expected(header: bytes, limits: StudyLimits) -> int:
    """Bytes of header plus voxel data the header announces, after checking its dimensions."""
    try:
        if len(header) >= NIFTI2_HEADER_BYTES and header[4:8] in (b"n+2\x00", b"ni2\x00"):
            hdr = nib.Nifti2Header.from_fileobj(io.BytesIO(header[:NIFTI2_HEADER_BYTES]))
        elif len(header) >= NIFTI1_HEADER_BYTES and header[344:348] in (b"n+1\x00", b"ni1\x00"):
            hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(header[:NIFTI1_HEADER_BYTES]))
        else:
            raise ValueError("no NIfTI magic")
        shape = tuple(int(s) for s in hdr.get_data_shape())
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
        offset = int(hdr.get_data_offset())
    except Exception as exc:
        raise ImageReadError("The NIfTI header could not be read: it may be corrupt.", 400) from exc
    spatial = shape[:3] if len(shape) >= 3 else shape
    if len(shape) < 3 or len(shape) > 4 or (len(shape) == 4 and shape[3] != 1) or min(shape) < 1:
        raise ImageReadError("Expected one 3D volume in the NIfTI file.", 400)
    _check_series_size(spatial, limits)
    return offset + int(np.prod(shape, dtype=np.int64)) * itemsize


# -- DICOM series ------------------------------------------------------------------
def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


@dataclass
class _Slice:
    ds: Any
    position: np.ndarray       # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray    # ImageOrientationPatient (row direction, column direction)
    spacing: np.ndarray        # PixelSpacing (between rows, between columns)
    shape: tuple[int, int]


def read_dicom_series(files: Iterable[bytes], limits: StudyLimits = StudyLimits()) -> Study:
    """DICOM files of one study (one or more series) as a study, one volume per series."""
    by_series: dict[str, list[_Slice]] = {}
    for data in files:
        ds = _parse(data, limits)
        if ds is None:
            continue
        uid = str(optional_value(ds, "SeriesInstanceUID") or "") or "unknown"
        by_series.setdefault(uid, []).append(_slice_of(ds))
    if not by_series:
        raise ImageReadError("The upload holds no DICOM image.", 400)
    if len(by_series) > limits.max_series:
        raise ImageReadError(f"The upload holds {len(by_series)} series; the limit is {limits.max_series}.", 413)
    volumes = tuple(_series_volume(slices, limits) for slices in by_series.values())
    kinds = [v.sequence for v in volumes if v.sequence]
    if len(kinds) != len(set(kinds)):
        raise ImageReadError("The upload holds two series of the same kind; send one STIR and one T1 series.", 400)
    return Study(volumes, "dicom")


def _parse(data: bytes, limits: StudyLimits) -> Any | None:
    """A DICOM dataset without its pixel data decoded; None for a DICOMDIR or a file without pixels."""
    stream, _deflated = dicom_stream(data, limits.max_bytes)   # a deflated file is inflated once, bounded
    try:
        ds = pydicom.dcmread(stream, force=True)
    except Exception as exc:
        raise ImageReadError("A file of the series could not be parsed as DICOM: it may be corrupt.", 400) from exc
    if "DirectoryRecordSequence" in ds:
        return None
    if "PixelData" not in ds:
        if not any(k in ds for k in ("Rows", "SOPClassUID", "Modality")):
            raise ImageReadError("A file of the upload is not DICOM.", 415)
        return None
    return ds


def _slice_of(ds: Any) -> _Slice:
    position = _floats(optional_value(ds, "ImagePositionPatient"), 3)
    orientation = _floats(optional_value(ds, "ImageOrientationPatient"), 6)
    spacing = _floats(optional_value(ds, "PixelSpacing"), 2)
    try:
        shape = (int(ds.Rows), int(ds.Columns))
    except Exception as exc:
        raise ImageReadError("A slice's DICOM header gives no image size (Rows/Columns).", 400) from exc
    if position is None or orientation is None or spacing is None or np.any(spacing <= 0):
        raise ImageReadError("A slice has no position, orientation or pixel spacing: the series cannot be "
                             "assembled into a volume. Send a single slice instead.", 400)
    if int(optional_value(ds, "NumberOfFrames") or 1) != 1:
        raise ImageReadError("Multi-frame DICOM series are not supported; send the slices as separate files.", 415)
    return _Slice(ds, position, orientation, spacing, shape)


def _series_volume(slices: list[_Slice], limits: StudyLimits) -> Volume:
    first = slices[0]
    if any(s.shape != first.shape for s in slices):
        raise ImageReadError("The series mixes slice sizes; it cannot be one volume.", 400)
    if any(np.abs(s.orientation - first.orientation).max() > 1e-3 for s in slices):
        raise ImageReadError("The series mixes slice orientations; it cannot be one volume.", 400)
    if any(np.abs(s.spacing - first.spacing).max() > 1e-3 for s in slices):
        raise ImageReadError("The series mixes pixel spacings; it cannot be one volume.", 400)
    _check_series_size((len(slices), *first.shape), limits)
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 0.5:
        raise ImageReadError("The slices' orientation is invalid.", 400)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    offsets = np.array([float(s.position @ normal) for s in slices])
    steps = np.diff(offsets)
    if len(slices) > 1:
        if np.any(steps < 1e-3):
            raise ImageReadError("Two slices of the series lie at the same position.", 400)
        if steps.max() - steps.min() > 0.1 * steps.mean() + 1e-3:
            raise ImageReadError("The slices are not evenly spaced: some may be missing from the upload.", 400)
        step = float(steps.mean())
    else:
        step = first_float(optional_value(first.ds, "SliceThickness")) or 1.0
    stored = np.empty((first.shape[1], first.shape[0], len(slices)), dtype=np.float32)  # (col, row, slice)
    for k, s in enumerate(slices):
        try:
            stored[:, :, k] = np.asarray(apply_modality_lut(s.ds.pixel_array, s.ds), dtype=np.float32).T
        except Exception as exc:
            raise ImageReadError("The pixel data of a slice could not be read: it may be corrupt or truncated.",
                                 400) from exc
    # LPS (DICOM) to RAS (NIfTI): negate x and y.
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, 0] = lps_to_ras @ row_dir * first.spacing[1]       # along a row: the column index
    affine[:3, 1] = lps_to_ras @ col_dir * first.spacing[0]       # down a column: the row index
    affine[:3, 2] = lps_to_ras @ normal * step
    affine[:3, 3] = lps_to_ras @ slices[0].position
    meta = {"format": "dicom", **coded_facts(first.ds)}
    photometric = meta.get("photometric")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError("Only grey (monochrome) DICOM series can be read as volumes.", 415)
    if photometric == "MONOCHROME1":
        stored = stored.max() + stored.min() - stored
    return _volume(stored, affine, sequence_kind(first.ds), meta)


# -- zip ---------------------------------------------------------------------------
def zip_members(data: bytes, limits: StudyLimits = StudyLimits()) -> list[tuple[bytes, str]]:
    """The files of a zip upload, after refusing unsafe names, links, nesting and bombs."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ImageReadError("The zip file is corrupt.", 400) from exc
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_files:
        raise ImageReadError(f"The zip holds {len(files)} files; the limit is {limits.max_files}.", 413)
    for info in files:
        name = info.filename.replace("\\", "/")
        parts = posixpath.normpath(name).split("/")
        if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise ImageReadError("The zip holds a file with an unsafe path; it was refused.", 400)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ImageReadError("The zip holds a symbolic link; it was refused.", 400)
        if info.flag_bits & 0x1:
            raise ImageReadError("The zip is encrypted; send it without a password.", 400)
    announced = sum(i.file_size for i in files)
    if announced > limits.max_bytes:
        raise ImageReadError(f"The zip inflates to {size_text(announced)}; the limit is {size_text(limits.max_bytes)}.",
                             413)
    members, total = [], 0
    for info in files:
        base = posixpath.basename(info.filename)
        if base.startswith(".") or base.upper() == "DICOMDIR":
            continue
        with archive.open(info) as fh:
            # Read no more than the header announced: a member that lies about its size is cut and refused.
            blob = fh.read(info.file_size + 1)
        if len(blob) > info.file_size or len(blob) > max(info.compress_size, 1) * limits.max_ratio:
            raise ImageReadError("The zip holds a member that inflates far beyond its size; it was refused.", 413)
        total += len(blob)
        if total > limits.max_bytes:
            raise ImageReadError(f"The zip inflates beyond the limit of {size_text(limits.max_bytes)}.", 413)
        if blob[:4] == ZIP_MAGIC:
            raise ImageReadError("The zip holds another zip; send the files of the series directly.", 400)
        members.append((blob, base))
    return members


def read_study(files: Sequence[bytes], limits: StudyLimits = StudyLimits(),
               names: Sequence[str | None] | None = None) -> Study:
    """One upload of a study: a NIfTI volume (or one per sequence), DICOM files, or one zip of them.
    `names` (the uploaded file names) only tell which NIfTI volume is which sequence ("1007_STIR.nii.gz"): they
    are matched against a closed list of tokens and never kept."""
    if not files:
        raise ImageReadError("No file was uploaded.", 400)
    total = sum(len(f) for f in files)
    if total > limits.max_bytes:
        raise ImageReadError(f"The upload is {size_text(total)}; the limit is {size_text(limits.max_bytes)}.", 413)
    if len(files) > limits.max_files:
        raise ImageReadError(f"The upload holds {len(files)} files; the limit is {limits.max_files}.", 413)
    names = list(names) if names is not None else [None] * len(files)
    expanded: list[tuple[bytes, str | None]] = []
    for data, name in zip(files, names):
        if data[:4] == ZIP_MAGIC:
            expanded.extend(zip_members(data, limits))
        else:
            expanded.append((data, name))
    niftis = [(d, n) for d, n in expanded if is_nifti(d)]
    if niftis:
        if len(niftis) != len(expanded):
            raise ImageReadError("The upload mixes NIfTI volumes and other files; send one kind.", 400)
        return _nifti_study(niftis, limits)
    return read_dicom_series([d for d, _ in expanded], limits)


def _nifti_study(blobs: list[tuple[bytes, str | None]], limits: StudyLimits) -> Study:
    if len(blobs) > limits.max_series:
        raise ImageReadError(f"The upload holds {len(blobs)} volumes; the limit is {limits.max_series}.", 413)
    volumes = [read_nifti(b, limits, sequence_from_text(n)).volumes[0] for b, n in blobs]
    kinds = [v.sequence for v in volumes if v.sequence]
    if len(kinds) != len(set(kinds)):
        raise ImageReadError("The upload holds two volumes of the same sequence.", 400)
    shapes = {v.voxels.shape for v in volumes}
    if len(shapes) > 1:
        raise ImageReadError("The volumes of the study are on different grids.", 400)
    return Study(tuple(volumes), "nifti")


# -- a decoded study on disk (a queued run's input) -----------------------------------
def study_bytes(study: Study) -> bytes:
    """The study's volumes, geometry and coded facts as one .npz (no pickle: arrays and a JSON header only)."""
    header = {"kind": study.kind, "volumes": [
        {"spacing_mm": list(v.spacing_mm), "plane": v.plane, "sequence": v.sequence,
         "axes": list(v.reorientation.axes), "flips": list(v.reorientation.flips), "meta": v.meta}
        for v in study.volumes]}
    arrays = {f"voxels{i}": np.ascontiguousarray(v.voxels, dtype=np.float32) for i, v in enumerate(study.volumes)}
    arrays.update({f"affine{i}": np.asarray(v.affine, dtype=np.float64) for i, v in enumerate(study.volumes)})
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def study_from_bytes(data: bytes) -> Study:
    """The study `study_bytes` wrote."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        header = json.loads(archive["header"].tobytes().decode())
        volumes = tuple(
            Volume(archive[f"voxels{i}"], tuple(v["spacing_mm"]), v["plane"], v["sequence"], archive[f"affine{i}"],
                   Reorientation(tuple(v["axes"]), tuple(v["flips"])), v["meta"])
            for i, v in enumerate(header["volumes"]))
    return Study(volumes, header["kind"])


def single_slice_study(pixels: np.ndarray, meta: dict[str, Any], sequence: str | None = None) -> Study:
    """A study of one slice (a PNG, JPEG or single DICOM image already decoded by imaging.io): its pixel size is
    not known, so its volumes are counted in pixels, and it is never written back as a NIfTI on a scanner grid."""
    voxels = np.asarray(pixels, dtype=np.float32)[None]
    spacing = tuple(float(s) for s in (meta.get("pixel_spacing_mm") or (1.0, 1.0)))[:2]
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    facts = {**meta, "slices": 1, "rows": int(voxels.shape[1]), "cols": int(voxels.shape[2]), "single_slice": True,
             "spacing_known": bool(meta.get("pixel_spacing_mm"))}
    return Study((Volume(voxels, (1.0, spacing[0], spacing[1]), "coronal", sequence, affine,
                         Reorientation((0, 1, 2), (False, False, False)), facts),), "slice")
