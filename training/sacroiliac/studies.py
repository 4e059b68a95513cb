"""The real sacroiliac studies of ../shared/data/sij_mri_nifti: cases, folds by case, region examples.

Every patient has spondyloarthritis (there are no healthy controls). Nine cases have a manual mask of
the disease region (periarticular sacrum and ilium) on the image grid; STIR and T1W of a case share
that grid, so each labelled slice gives one example per sequence present. Splits are by case, never
by slice: with nine cases, figures come from cross-validation over CASE_FOLDS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging.volume import read_nifti
from imaging.normalize import normalise_volume
from tasks.sacroiliac_region import region_target, slice_stacks
from training.toolbox.runs import data_dir

SEQUENCES = ("T1W", "STIR")
# Three folds of three cases, each with two STIR studies, so every fold tests both sequences.
CASE_FOLDS = (("1001", "1007", "1012"), ("1013", "1016", "2016"), ("2015", "3002", "3009"))
# Why the study models ship without a training-data check of their own (the registry's "ood_exempt").
STUDY_OOD_EXEMPT = ("no training-data check of its own yet: trained on 9 (region) or 5 (oedema) real cases, too few "
                    "to fit and hold out a feature distribution by case; the study task stands behind the image "
                    "recogniser (an upload recognised as another kind is refused) and refuses sagittal series")


def studies_dir() -> Path:
    return data_dir() / "sij_mri_nifti"


@dataclass(frozen=True)
class Case:
    case_id: str
    images: dict[str, Path]          # sequence ("T1W", "STIR") -> NIfTI path
    region: Path                     # the disease-region mask


def labelled_cases(root: Path | None = None) -> list[Case]:
    """Every case with a disease-region mask and at least one image, sorted by case id."""
    root = root or studies_dir()
    cases = []
    for mask in sorted((root / "disease_region").glob("*_disease_region.nii.gz")):
        case_id = mask.name.split("_")[0]
        images = {seq: p for seq in SEQUENCES for p in sorted(root.glob(f"images/*/{case_id}_{seq}.nii.gz"))[:1]}
        if images:
            cases.append(Case(case_id, images, mask))
    return cases


def folds_of(case_ids: list[str], folds: tuple[tuple[str, ...], ...] = CASE_FOLDS) -> list[tuple[list[str], list[str]]]:
    """(train ids, test ids) per fold; a case is on one side only, and cases no fold names always train."""
    out = []
    for test in folds:
        held = [c for c in case_ids if c in test]
        out.append(([c for c in case_ids if c not in test], held))
    return out


def read_volume(path: Path) -> np.ndarray:
    """A study volume in canonical orientation (slices, rows, cols)."""
    return read_nifti(path.read_bytes()).volumes[0].voxels


@dataclass
class RegionExamples:
    """2.5D stacks and region targets, one row per slice and sequence, with where each row came from."""

    x: np.ndarray                    # (n, size, size, 3) float32
    y: np.ndarray                    # (n, size, size, 1) float32
    case_ids: np.ndarray             # (n,) str
    sequences: np.ndarray            # (n,) str

    def __len__(self) -> int:
        return len(self.x)


def region_examples(cases: list[Case], size: int) -> RegionExamples:
    xs, ys, ids, seqs = [], [], [], []
    for case in cases:
        region = read_volume(case.region) > 0
        target = region_target(region, size)
        for seq, path in case.images.items():
            volume = read_volume(path)
            if volume.shape != region.shape:
                raise ValueError(f"case {case.case_id}: {seq} is not on the region mask's grid")
            xs.append(slice_stacks(normalise_volume(volume), size))
            ys.append(target)
            ids += [case.case_id] * len(volume)
            seqs += [seq] * len(volume)
    return RegionExamples(np.concatenate(xs), np.concatenate(ys), np.array(ids), np.array(seqs))
