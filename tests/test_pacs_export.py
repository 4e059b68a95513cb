"""The DICOM objects a run becomes for the PACS (pacs.export), checked against the run's own numbers without a
PACS: written and read back with pydicom, parsed with highdicom, the source image referenced by UID."""
from __future__ import annotations

import io

import cv2
import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import UID

from pacs.export import ModelFacts, RunFacts, build, kinds
from tests.test_pacs import _dicom, _numbers

SHA = "c0ffee" + "0" * 58


def _source(modality: str = "MR", **extra):
    pixels = (np.arange(160 * 200).reshape(160, 200) % 251).astype(np.uint16)
    return dcmread(io.BytesIO(_dicom(pixels, modality, "ACC1", PixelSpacing=[0.5, 0.8], SliceThickness=3.0,
                                     ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6],
                                     ImagePositionPatient=[-50, -40, 30], **extra)))


def _round_trip(objects):
    out = []
    for ds in objects:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(dcmread(io.BytesIO(buf.getvalue())))
    return out


def test_a_sacroiliac_run_gives_seg_sr_sc_and_pdf_on_the_source_grid(tmp_path):
    source = _source()
    mask = np.zeros((160, 200), np.uint8)
    mask[40:100, 30:70] = 255
    mask[50:110, 130:170] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    cv2.imwrite(str(tmp_path / "overlay.png"), np.dstack([mask] * 3))
    area = int((mask > 0).sum())
    facts = RunFacts("f" * 32, "sacroiliac", [
        ModelFacts("sij-attention-unet", "1.0.0", SHA, "segmenter", {"found": True, "area_px": area},
                   {"mask": tmp_path / "mask.png"}),
        ModelFacts("sij-dual-head", "1.0.0", SHA, "classifier", {"as_status": "positive", "stage_name": "Moderate",
                                                                 "as_probability": 0.81})],
        [(tmp_path / "overlay.png", "Joint-region mask over the scan")], b"%PDF-1.4 a report")
    objects = _round_trip(build(source, facts))
    assert kinds(objects) == {"SEG": 1, "SR": 1, "SC": 1, "PDF": 1}
    uids = [str(o.SOPInstanceUID) for o in objects]
    assert len(set(uids)) == 4 and all(UID(u).is_valid for u in uids) and source.SOPInstanceUID not in uids
    assert all(o.StudyInstanceUID == source.StudyInstanceUID and o.PatientID == source.PatientID for o in objects)
    seg = hd.seg.Segmentation.from_dataset(objects[0])
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    assert str(seg.SegmentSequence[0].SegmentLabel) == "Sacroiliac joint region"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "sij-attention-unet"
    pixels = np.asarray(seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1]))[0, :, :, 0]
    assert np.array_equal(pixels.astype(bool), mask > 0)
    sr = objects[1]
    numbers = _numbers(sr)
    assert ("Area", pytest.approx(area * 0.5 * 0.8), ["Sacroiliac joint"]) in \
        [(n, pytest.approx(v), s) for n, v, s in numbers]
    texts = " ".join(str(e.value) for e in sr.iterall() if isinstance(e.value, str))
    assert "Moderate" in texts and "sij-dual-head" in texts and f"sha256 {SHA}" in texts
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    sc = objects[2]
    assert (sc.Rows, sc.Columns) == (160, 200) and sc.PhotometricInterpretation == "RGB"
    pdf = objects[3]
    assert bytes(pdf.EncapsulatedDocument).rstrip(b"\0") == b"%PDF-1.4 a report" and pdf.Modality == "DOC"


def test_hand_guss_goes_into_the_report_per_joint_with_its_finding_site():
    facts = RunFacts("e" * 32, "hand", [
        ModelFacts("hand-joint-detector", "1.0.0", SHA, "detector", {"n_found": 8}),
        ModelFacts("hand-guss-scorer", "1.0.0", SHA, "scorer", {"joints": [
            {"name": "PIP2", "guss": 140, "plate": 70, "space": 70}, {"name": "DIP5", "guss": 200},
            {"name": "DIP3", "guss": None, "withheld": "unsure detection"}]})], [], b"%PDF-1.4")
    sr = _round_trip(build(_source("CR"), facts))[0]
    numbers = _numbers(sr)
    totals = {tuple(sites)[-1]: v for name, v, sites in numbers if name.startswith("GUSS (")}
    assert totals == {"proximal interphalangeal joint of the index finger": 140.0,
                      "distal interphalangeal joint of the little finger": 200.0}
    assert ("GUSS subchondral plate", 70.0) in [(n, v) for n, v, _ in numbers]


def test_a_withheld_grade_is_reported_as_withheld_not_as_a_number():
    facts = RunFacts("d" * 32, "knee", [ModelFacts("knee-kl-grader", "1.0.0", SHA, "grader",
                                                   {"withheld": "outside the grader's data"})], [], b"%PDF-1.4")
    objects = _round_trip(build(_source("CR"), facts))
    assert kinds(objects) == {"SR": 1, "PDF": 1}
    assert _numbers(objects[0]) == []
    assert "Answer withheld" in " ".join(str(e.value) for e in objects[0].iterall() if isinstance(e.value, str))


def test_knee_grade_and_side():
    facts = RunFacts("c" * 32, "knee", [ModelFacts("knee-kl-grader", "1.0.0", SHA, "grader",
                                                   {"grade": 3, "value": 2.7, "side": "L"})], [], b"%PDF-1.4")
    sr = _round_trip(build(_source("CR"), facts))[0]
    numbers = {n: v for n, v, _ in _numbers(sr)}
    assert numbers == {"Kellgren-Lawrence grade": 3.0, "Kellgren-Lawrence grade, continuous": 2.7}
    texts = " ".join(str(e.value) for e in sr.iterall() if isinstance(e.value, str))
    assert "Knee" in texts and "Left" in texts


def test_a_study_run_gives_one_seg_over_the_whole_series_frame_by_frame(tmp_path):
    """A study's masks (NIfTI on the reader's grid) go back as one SEG referencing every image of the series, each
    frame on the image it was read from, whatever order the PACS returned them in."""
    from pydicom.uid import generate_uid

    from imaging.volume import read_study

    series_uid, frame_uid = generate_uid(), generate_uid()
    pixels = (np.arange(160 * 200).reshape(160, 200) % 251).astype(np.uint16)
    normal = np.cross([1, 0, 0], [0, 0.8, -0.6])
    images = []
    for k in range(4):
        blob = _dicom(pixels, "MR", "ACC2", PixelSpacing=[0.5, 0.8], SliceThickness=3.0,
                      ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6],
                      ImagePositionPatient=list(np.array([-50.0, -40.0, 30.0]) + 3.0 * k * normal), InstanceNumber=k + 1)
        ds = dcmread(io.BytesIO(blob))
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, frame_uid
        ds.StudyInstanceUID = images[0].StudyInstanceUID if images else ds.StudyInstanceUID
        images.append(ds)
    study = read_study([_bytes(d) for d in images])
    volume = study.volumes[0]
    region = np.zeros(volume.voxels.shape, np.uint8)
    region[1:3, 20:60, 30:90] = 1                       # canonical slices 1 and 2
    oedema = np.zeros_like(region)
    oedema[2, 30:40, 40:50] = 1
    (tmp_path / "region.nii.gz").write_bytes(volume.nifti_bytes(region))
    (tmp_path / "oedema.nii.gz").write_bytes(volume.nifti_bytes(oedema))
    facts = RunFacts("b" * 32, "sacroiliac_study", [
        ModelFacts("sij-study-region-attention-unet", "1.0.0", SHA, "segmenter",
                   {"found": True, "region_ml": 1.0, "oedema": {"measured": False}})], [], b"%PDF-1.4 r",
        {"region.nii.gz": tmp_path / "region.nii.gz", "oedema.nii.gz": tmp_path / "oedema.nii.gz"})
    shuffled = [images[2], images[0], images[3], images[1]]
    objects = _round_trip(build(images[1], facts, shuffled))
    assert kinds(objects)["SEG"] == 1
    seg = hd.seg.Segmentation.from_dataset(objects[0])
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(d.SOPInstanceUID) for d in images}
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Sacroiliac disease region", "Bone marrow oedema"]
    # The reader put the slices in order along the normal: the image stored k-th along it carries frame k.
    by_position = sorted(images, key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, float)))
    for k, image in enumerate(by_position):
        got = np.asarray(seg.get_pixels_by_source_instance([image.SOPInstanceUID], segment_numbers=[1, 2],
                                                           ignore_spatial_locations=True))[0]
        assert np.array_equal(got[..., 0].astype(bool), region[k] > 0), k
        assert np.array_equal(got[..., 1].astype(bool), oedema[k] > 0), k


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
