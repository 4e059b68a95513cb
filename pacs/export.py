"""A run's results as DICOM objects for the patient's record, on the grid of the image they came from:

- each segmentation as DICOM SEG (highdicom), one segment per structure, referencing the source image;
- the grades, scores and measurements as a Comprehensive 3D SR holding a TID 1500 measurement report: KL grade
  and its continuous value with the knee and its side as finding site, GUSS per finger joint (plate, space,
  total) with the joint as finding site, the spine's structure counts and areas, the sacroiliac joint region's
  area and the AS status and stage; every measurement names the model (id, version, sha256) as its algorithm;
- each overlay picture as secondary capture (highdicom SCImage);
- the PDF report as Encapsulated PDF.

Patient and study attributes are copied from the source image, retrieved from the PACS for the export and held
in memory only: JointScan stores none of them. Concepts that neither SNOMED CT nor DICOM codes (a KL grade, a
GUSS joint score) use JointScan's local coding scheme (99JSCAN, the DICOM form for private schemes).
"""
from __future__ import annotations

import gzip

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

LOCAL = "99JSCAN"
MANUFACTURER = "JointScan"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def local(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, LOCAL, meaning)


def ucum(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, "UCUM", meaning)


# What each task's segmenters give as label images: (image key, [(label value or None for "> 127", segment
# label, property category, property type)]).
SEGMENTS: dict[str, tuple[str, list[tuple[int | None, str, Any, Any]]]] = {
    "sacroiliac": ("mask", [(None, "Sacroiliac joint region", codes.SCT.AnatomicalStructure,
                             codes.SCT.SacroiliacJoint)]),
    "spine": ("label_mask", [(76, "Vertebra", codes.SCT.AnatomicalStructure, codes.SCT.Vertebra),
                             (29, "Intervertebral disc", codes.SCT.AnatomicalStructure,
                              local("IVD", "Intervertebral disc")),
                             (150, "Spinal canal", codes.SCT.AnatomicalStructure, codes.SCT.SpinalCanalStructure)]),
}
JOINT_MEANINGS = {"PIP": "proximal interphalangeal joint", "DIP": "distal interphalangeal joint"}
FINGERS = {"2": "index finger", "3": "middle finger", "4": "ring finger", "5": "little finger"}
STAGES = ("Normal", "Early", "Moderate", "Advanced")


@dataclass
class ModelFacts:
    model_id: str
    version: str
    sha256: str
    role: str
    result: dict[str, Any]
    images: dict[str, Path] = field(default_factory=dict)


@dataclass
class RunFacts:
    run_id: str
    task: str
    models: list[ModelFacts]
    pictures: list[tuple[Path, str]]       # overlay pictures and their captions
    pdf: bytes
    # A study's masks as NIfTI on the analysed series' grid (the study task's downloads), by segment name.
    volumes: dict[str, Path] = field(default_factory=dict)


class _Numbers:
    """Series and instance numbers for one export (each object a series of its own, numbered from 9001)."""

    def __init__(self):
        self.n = 9000

    def next(self) -> int:
        self.n += 1
        return self.n


def _label_image(path: Path, shape: tuple[int, int], spec: list) -> np.ndarray:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError(f"the stored mask {path.name} cannot be read")
    if grey.shape != shape:
        grey = cv2.resize(grey, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    labels = np.zeros(shape, np.uint8)
    for number, (value, *_rest) in enumerate(spec, start=1):
        labels[(grey > 127) if value is None else (grey == value)] = number
    return labels


def segmentations(source: Dataset, facts: RunFacts, numbers: _Numbers) -> list[hd.seg.Segmentation]:
    if facts.task not in SEGMENTS:
        return []
    key, spec = SEGMENTS[facts.task]
    out = []
    for model in facts.models:
        if model.role != "segmenter" or key not in model.images or model.result.get("withheld"):
            continue
        labels = _label_image(model.images[key], (int(source.Rows), int(source.Columns)), spec)
        algorithm = hd.AlgorithmIdentificationSequence(name=model.model_id, version=model.version,
                                                       family=codes.cid7162.ArtificialIntelligence,
                                                       parameters={"sha256": model.sha256})
        present = [n for n in range(1, len(spec) + 1) if (labels == n).any()]
        if not present:
            continue
        descriptions = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=spec[n - 1][1],
                                                  segmented_property_category=spec[n - 1][2],
                                                  segmented_property_type=spec[n - 1][3],
                                                  algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                                  algorithm_identification=algorithm)
                        for i, n in enumerate(present)]
        relabelled = np.zeros_like(labels)
        for i, n in enumerate(present):
            relabelled[labels == n] = i + 1
        number = numbers.next()
        out.append(hd.seg.Segmentation(
            source_images=[source], pixel_array=relabelled, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=model.model_id, software_versions=model.version, device_serial_number=facts.run_id,
            content_description=f"{spec[0][1]} by {model.model_id}"[:64], content_label="JOINTSCAN"))
    return out


# -- the measurement report ---------------------------------------------------------------------------
def _algorithm(model: ModelFacts) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.model_id, version=model.version,
                                         parameters=[f"sha256 {model.sha256}"])


def _group(name: str, model: ModelFacts, source: Dataset, measurements=(), evaluations=(), sites=()):
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name[:64]),
        algorithm_id=_algorithm(model), finding_sites=list(sites) or None,
        measurements=list(measurements) or None, qualitative_evaluations=list(evaluations) or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])


def _measure(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept, model: ModelFacts, sites=()):
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=_algorithm(model),
                             finding_sites=list(sites) or None)


def _side(result: dict[str, Any]):
    return {"L": codes.SCT.Left, "R": codes.SCT.Right}.get(str(result.get("side") or ""))


def _withheld(model: ModelFacts, source: Dataset, what: str):
    return _group(f"{what} withheld", model, source, evaluations=[hd.sr.QualitativeEvaluation(
        local("WITHHELD", "Answer withheld by the model's training-data check"), codes.SCT.Present)])


def knee_groups(model: ModelFacts, source: Dataset) -> list:
    r = model.result
    if r.get("withheld"):
        return [_withheld(model, source, "KL grade")]
    site = hd.sr.FindingSite(codes.SCT.Knee, laterality=_side(r))
    return [_group("Kellgren-Lawrence grade", model, source, sites=[site], measurements=[
        _measure(local("KLG", "Kellgren-Lawrence grade"), r["grade"], ucum("{grade}", "grade"), model),
        _measure(local("KLC", "Kellgren-Lawrence grade, continuous"), r["value"], ucum("{grade}", "grade"), model)])]


def _joint_site(name: str) -> hd.sr.FindingSite:
    kind, finger = name[:3], name[3:]
    return hd.sr.FindingSite(local(name, f"{JOINT_MEANINGS.get(kind, kind)} of the {FINGERS.get(finger, finger)}"))


def hand_groups(model: ModelFacts, source: Dataset) -> list:
    if model.role != "scorer":
        return []
    if model.result.get("withheld"):
        return [_withheld(model, source, "GUSS")]
    groups = []
    for joint in model.result.get("joints") or []:
        if joint.get("guss") is None:
            continue
        score = ucum("{score}", "score")
        groups.append(_group(f"GUSS {joint['name']}", model, source, sites=[_joint_site(joint["name"])], measurements=[
            _measure(local("GUSS", "GUSS (Ghent University Scoring System) total"), joint["guss"], score, model),
            *[_measure(local(code, meaning), joint[key], score, model)
              for key, code, meaning in (("plate", "GUSSP", "GUSS subchondral plate"),
                                         ("space", "GUSSJ", "GUSS joint space")) if joint.get(key) is not None]]))
    return groups


def spine_groups(model: ModelFacts, source: Dataset) -> list:
    r = model.result
    if r.get("withheld"):
        return [_withheld(model, source, "Spine structures")]
    counts, areas, mm2 = r.get("counts") or {}, r.get("areas_px") or {}, r.get("areas_mm2")
    measurements = [_measure(local("NVERT", "Number of vertebrae"), counts.get("vertebrae", 0), ucum("{count}", "count"),
                             model),
                    _measure(local("NDISC", "Number of intervertebral discs"), counts.get("discs", 0),
                             ucum("{count}", "count"), model)]
    sites = {"vertebra": codes.SCT.Vertebra, "disc": local("IVD", "Intervertebral disc"),
             "canal": codes.SCT.SpinalCanalStructure}
    for name, site in sites.items():
        value, unit = (mm2[name], ucum("mm2", "square millimeter")) if mm2 else (areas.get(name, 0),
                                                                                  ucum("{pixels}", "pixels"))
        measurements.append(_measure(codes.SCT.Area, value, unit, model, [hd.sr.FindingSite(site)]))
    return [_group("Lumbar spine structures", model, source, sites=[hd.sr.FindingSite(codes.SCT.LumbarSpine)],
                   measurements=measurements)]


def sacroiliac_groups(model: ModelFacts, source: Dataset) -> list:
    r = model.result
    if r.get("withheld"):
        return [_withheld(model, source, "Sacroiliac " + model.role)]
    site = [hd.sr.FindingSite(codes.SCT.SacroiliacJoint)]
    if model.role == "segmenter":
        spacing = source.get("PixelSpacing")
        value, unit = ((r.get("area_px", 0) * float(spacing[0]) * float(spacing[1]), ucum("mm2", "square millimeter"))
                       if spacing else (r.get("area_px", 0), ucum("{pixels}", "pixels")))
        return [_group("Sacroiliac joint region", model, source, sites=site,
                       measurements=[_measure(codes.SCT.Area, value, unit, model)])]
    status = codes.SCT.Positive if r.get("as_status") == "positive" else codes.SCT.Negative
    stage = str(r.get("stage_name") or "")
    return [_group("AS status and stage", model, source, sites=site, evaluations=[
        hd.sr.QualitativeEvaluation(local("ASSTATUS", "Ankylosing spondylitis status"), status),
        hd.sr.QualitativeEvaluation(local("ASSTAGE", "Ankylosing spondylitis stage"),
                                    local(f"STAGE{STAGES.index(stage) if stage in STAGES else 9}", stage or "unknown"))],
        measurements=[_measure(local("ASPROB", "Probability of ankylosing spondylitis"),
                               r.get("as_probability", 0.0), ucum("1", "no units"), model)])]


def sacroiliac_study_groups(model: ModelFacts, source: Dataset) -> list:
    """A study's disease region and, inside it, the oedema: its volume (mL), lesions and the ASAS definition."""
    r = model.result
    site = [hd.sr.FindingSite(codes.SCT.SacroiliacJoint)]
    ml = ucum("ml", "milliliter")
    # A region segmenter reports its region and the intensity method's oedema in it; a learned oedema model its own.
    measurements = [_measure(local("SIJREGION", "Sacroiliac disease region volume"), r.get("region_ml") or 0.0, ml,
                             model)] if model.role == "segmenter" else []
    evaluations = []
    oedema = r.get("oedema") or {}
    if oedema.get("measured"):
        measurements += [_measure(local("BMEVOL", "Volume of hyperintense bone marrow oedema"), oedema["volume_ml"],
                                  ml, model),
                         _measure(local("BMELES", "Number of bone marrow oedema lesions"), oedema["lesions"],
                                  ucum("{count}", "count"), model),
                         _measure(local("SPARCCX", "SPARCC-style oedema count (research)"),
                                  oedema["sparcc_like"]["total"], ucum("{score}", "score"), model)]
        evaluations.append(hd.sr.QualitativeEvaluation(
            local("ASASMRI", "ASAS definition of active sacroiliitis on MRI"),
            codes.SCT.Positive if oedema["asas"]["positive"] else codes.SCT.Negative))
    if not measurements:
        return []
    title = "Sacroiliac disease region and oedema" if model.role == "segmenter" else "Bone marrow oedema (learned)"
    return [_group(title, model, source, sites=site, measurements=measurements, evaluations=evaluations)]


GROUPS = {"knee": knee_groups, "hand": hand_groups, "spine": spine_groups, "sacroiliac": sacroiliac_groups,
          "sacroiliac_study": sacroiliac_study_groups}


def measurement_report(source: Dataset, facts: RunFacts, numbers: _Numbers) -> hd.sr.Comprehensive3DSR:
    groups = [g for model in facts.models for g in GROUPS[facts.task](model, source)]
    if not groups:
        raise ValueError("the run has no finding to report")
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                     observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                                         uid=generate_uid(), name="JointScan", manufacturer_name=MANUFACTURER,
                                         model_name=", ".join(m.model_id for m in facts.models)[:64]))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(evidence=[source], content=report, series_instance_uid=generate_uid(),
                                   series_number=numbers.next(), sop_instance_uid=generate_uid(), instance_number=1,
                                   manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)


# -- pictures and the PDF ---------------------------------------------------------------------------------
def _orientation(source: Dataset) -> tuple[str, str]:
    """Patient orientation letters of the rows and columns (DICOM C.7.6.1.1.1), from the source."""
    if source.get("PatientOrientation") and len(source.PatientOrientation) == 2:
        return tuple(str(v) for v in source.PatientOrientation)
    cosines = source.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return ("L", "F")

    def letter(v) -> str:
        axis = int(np.argmax(np.abs(v)))
        return ("L", "P", "H")[axis] if v[axis] > 0 else ("R", "A", "F")[axis]
    return (letter(np.asarray(cosines[:3], float)), letter(np.asarray(cosines[3:], float)))


def secondary_captures(source: Dataset, facts: RunFacts, numbers: _Numbers) -> list[hd.sc.SCImage]:
    out = []
    series_uid, series_number = generate_uid(), numbers.next()
    for i, (path, caption) in enumerate(facts.pictures, start=1):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=i, manufacturer=MANUFACTURER,
            patient_orientation=_orientation(source))
        sc.SeriesDescription = "JointScan overlays"
        sc.ImageComments = caption[:10240]
        sc.BurnedInAnnotation = "NO"
        out.append(sc)
    return out


def encapsulated_pdf(source: Dataset, pdf: bytes, numbers: _Numbers, title: str) -> Dataset:
    """Encapsulated PDF IOD (DICOM PS3.3 A.45.1), written field by field: neither pydicom nor highdicom builds
    one, and it is a handful of modules (patient and study from the source, series, equipment, document)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in PATIENT_STUDY:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    now = datetime.now()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.Modality = "DOC"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), numbers.next(), 1
    ds.SeriesDescription = "JointScan report"
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "WSD"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"         # the report's text is part of the document
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    # A file dataset (preamble and DICM prefix), as highdicom's objects are: STOW-RS sends each as a file.
    return FileDataset(None, ds, file_meta=ds.file_meta, preamble=b"\0" * 128)


STUDY_SEGMENTS = {"region.nii.gz": ("Sacroiliac disease region", codes.SCT.AnatomicalStructure,
                                     codes.SCT.SacroiliacJoint),
                  "oedema.nii.gz": ("Bone marrow oedema", codes.SCT.MorphologicallyAbnormalStructure,
                                    codes.SCT.Edema)}


def slice_order(series: list[Dataset]) -> list[Dataset]:
    """The series' images in the order the study reader stacks them (position along the slice normal), so that
    frame k of a study mask is the k-th image here."""
    def along_normal(ds: Dataset) -> float:
        ori = np.asarray(ds.ImageOrientationPatient, float)
        return float(np.cross(ori[:3], ori[3:]) @ np.asarray(ds.ImagePositionPatient, float))

    return sorted((d for d in series if "PixelData" in d), key=along_normal)


def study_segmentation(series: list[Dataset], facts: RunFacts, numbers: _Numbers) -> list[hd.seg.Segmentation]:
    """One multi-frame SEG of the whole analysed series: the disease region and the oedema, frame by frame on
    the source images (their NIfTI masks are stored on the reader's grid: columns, rows, slices)."""
    import nibabel as nib

    images = slice_order(series)
    segmenter = next((m for m in facts.models if m.role == "segmenter"), None)
    if not images or segmenter is None:
        return []
    frames, descriptions = [], []
    for name, (label, category, kind) in STUDY_SEGMENTS.items():
        path = facts.volumes.get(name)
        if path is None:
            continue
        stored = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes())).dataobj) > 0
        if stored.shape != (int(images[0].Columns), int(images[0].Rows), len(images)):
            raise ValueError(f"the {label.lower()} mask is not on the series' grid")
        if not stored.any():
            continue
        frames.append(np.stack([stored[:, :, k].T for k in range(len(images))]))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(descriptions) + 1, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=segmenter.model_id, version=segmenter.version, family=codes.cid7162.ArtificialIntelligence,
                parameters={"sha256": segmenter.sha256})))
    if not frames:
        return []
    return [hd.seg.Segmentation(
        source_images=images, pixel_array=np.stack(frames, axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=numbers.next(), sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=segmenter.model_id,
        software_versions=segmenter.version, device_serial_number=facts.run_id,
        content_description=f"Disease region and oedema by {segmenter.model_id}"[:64], content_label="JOINTSCAN")]


def build(source: Dataset, facts: RunFacts, series: list[Dataset] | None = None) -> list[Dataset]:
    """Every object of the export, SEG first (the SR's evidence is the source image). A study's run also gets the
    analysed `series`: its masks go back as one SEG over all of the series' images."""
    numbers = _Numbers()
    objects: list[Dataset] = (study_segmentation(series, facts, numbers) if series is not None and facts.volumes
                              else list(segmentations(source, facts, numbers)))
    objects.append(measurement_report(source, facts, numbers))
    objects += secondary_captures(source, facts, numbers)
    objects.append(encapsulated_pdf(source, facts.pdf, numbers, f"JointScan report {facts.run_id[:8]}"))
    return objects


def kinds(objects: list[Dataset]) -> dict[str, int]:
    names = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR",
             "1.2.840.10008.5.1.4.1.1.7": "SC", ENCAPSULATED_PDF: "PDF"}
    out: dict[str, int] = {}
    for ds in objects:
        name = names.get(str(ds.SOPClassUID), str(ds.SOPClassUID))
        out[name] = out.get(name, 0) + 1
    return out
