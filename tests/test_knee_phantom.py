"""Knee phantoms: a pure function of the seed, grade and phenotype drawn independently, labels from the
generator's parameters, left/right mirroring, and phenotype-specific progression."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from training.phantoms import knee as knee_phantoms


def test_same_seed_same_case():
    a, b = knee_phantoms.generate_knee(17), knee_phantoms.generate_knee(17)
    np.testing.assert_array_equal(a.image, b.image)
    assert (a.grade, a.phenotype, a.side, a.params) == (b.grade, b.phenotype, b.side, b.params)
    assert a.image.shape == (224, 224) and a.image.dtype == np.uint8
    assert not np.array_equal(a.image, knee_phantoms.generate_knee(18).image)


def test_grade_and_phenotype_are_independent_draws():
    cases = [knee_phantoms.generate_knee(s) for s in range(400)]
    table = np.zeros((5, 4), int)
    for c in cases:
        table[c.grade, c.phenotype_index] += 1
    assert (table > 0).all()                        # every combination occurs
    assert chi2_contingency(table).pvalue > 0.01    # no association between grade and phenotype
    # overriding the grade keeps the phenotype, the side and the anatomy
    c0, c4 = knee_phantoms.generate_knee(5, grade=0), knee_phantoms.generate_knee(5, grade=4)
    assert (c0.phenotype, c0.side) == (c4.phenotype, c4.side) and (c0.grade, c4.grade) == (0, 4)


def test_labels_come_from_parameters():
    for ph in knee_phantoms.PHENOTYPES:
        lo, hi = knee_phantoms.generate_knee(3, grade=0, phenotype=ph), knee_phantoms.generate_knee(3, grade=4, phenotype=ph)
        assert lo.grade == int(lo.severity) == 0 and hi.grade == int(hi.severity) == 4
        # disease narrows joint spaces and grows osteophytes
        assert min(hi.params["jsw_medial_px"], hi.params["jsw_lateral_px"]) < min(lo.params["jsw_medial_px"], lo.params["jsw_lateral_px"])
    med = knee_phantoms.generate_knee(8, grade=3, phenotype="medial").params
    lat = knee_phantoms.generate_knee(8, grade=3, phenotype="lateral").params
    ost = knee_phantoms.generate_knee(8, grade=3, phenotype="osteophyte").params
    scl = knee_phantoms.generate_knee(8, grade=3, phenotype="sclerotic").params
    assert med["jsw_medial_px"] < med["jsw_lateral_px"] and lat["jsw_lateral_px"] < lat["jsw_medial_px"]
    assert ost["osteophyte_medial_px"] > max(med["osteophyte_medial_px"], scl["osteophyte_medial_px"])
    assert scl["sclerosis_lateral"] > max(med["sclerosis_lateral"], ost["sclerosis_lateral"])


def test_kl0_traits_distinguish_the_phenotypes():
    """Each phenotype carries its person-level trait even at KL 0, where grading sees no OA."""
    cases = {ph: knee_phantoms.generate_knee(21, grade=0, phenotype=ph).params for ph in knee_phantoms.PHENOTYPES}
    assert cases["medial"]["alignment_deg"] > 2 > -2 > cases["lateral"]["alignment_deg"]
    assert cases["osteophyte"]["chondrocalcinosis"] > 0.5
    assert all(cases[ph]["chondrocalcinosis"] == 0 for ph in ("medial", "lateral", "sclerotic"))
    # chondrocalcinosis brightens the joint space and nothing else: the same knee drawn with and without it
    r_anat, r_acq, _, _, r_les, _ = knee_phantoms._streams(21)
    anat, acq = knee_phantoms._anatomy(r_anat), knee_phantoms._acquisition(r_acq)
    les = knee_phantoms.lesions(0.5, "osteophyte", r_les)
    with_calc, _ = knee_phantoms._render(anat, les, acq, np.random.default_rng(5), knee_phantoms.SIZE)
    without, _ = knee_phantoms._render(anat, {**les, "calc": 0.0}, acq, np.random.default_rng(5), knee_phantoms.SIZE)
    diff = with_calc.astype(float) - without.astype(float)
    rows = np.abs(diff).sum(axis=1)
    assert diff.sum() > 0 and rows.max() > 0
    band = np.flatnonzero(rows > 0.2 * rows.max())
    assert band.max() - band.min() < 0.12 * knee_phantoms.SIZE                     # a thin horizontal band ...
    assert abs(band.mean() - anat["y0"]) < 0.1 * knee_phantoms.SIZE                 # ... at the joint line


def test_right_knee_is_the_mirror_of_the_left():
    left = knee_phantoms.generate_knee(11, side="L")
    right = knee_phantoms.generate_knee(11, side="R")
    np.testing.assert_array_equal(left.image[:, ::-1], right.image)


def test_progression_rates_differ_by_phenotype():
    years = knee_phantoms.VISIT_YEARS
    seeds = knee_phantoms.SEED_RANGES["cohort"][:40]
    slopes = {}
    for s in seeds:
        subj = knee_phantoms.subject(s)
        sev = [knee_phantoms.severity_at(subj, t) for t in years]
        slopes.setdefault(subj["phenotype"], []).append(np.polyfit(years, sev, 1)[0])
    means = {k: np.mean(v) for k, v in slopes.items()}
    order = sorted(means, key=means.get)
    assert order == sorted(knee_phantoms.RATES, key=knee_phantoms.RATES.get)
    v0, v10 = knee_phantoms.generate_visit(seeds[0], 0), knee_phantoms.generate_visit(seeds[0], 10)
    assert v10.severity > v0.severity and v10.years == 10 and v0.phenotype == v10.phenotype
    assert v0.grade == int(v0.severity)


def test_seed_ranges_are_disjoint():
    ranges = list(knee_phantoms.SEED_RANGES.values())
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start


def test_cli_writes_images_and_manifest(tmp_path):
    assert knee_phantoms.main(["--out", str(tmp_path), "--split", "val", "--count", "3"]) == 0
    lines = (tmp_path / "val.csv").read_text().splitlines()
    assert lines[0].startswith("image_id,image_path,kl_grade") and len(lines) == 4
    assert len(list((tmp_path / "images").glob("*.png"))) == 3


@pytest.mark.parametrize("phenotype", knee_phantoms.PHENOTYPES)
def test_every_phenotype_renders(phenotype):
    c = knee_phantoms.generate_knee(2, grade=2, phenotype=phenotype)
    assert 20 < c.image.mean() < 235 and c.image.std() > 10


def test_bone_end_attrition_follows_the_narrowing():
    """Near KL 4 the bone ends wear where the cartilage is lost: one-sided narrowing wears one side,
    the sclerotic phenotype's two-sided narrowing wears both alike (not whichever narrowed a little more)."""
    for seed in range(5):
        med = knee_phantoms.generate_knee(seed, severity=4.7, phenotype="medial").params
        lat = knee_phantoms.generate_knee(seed, severity=4.7, phenotype="lateral").params
        scl = knee_phantoms.generate_knee(seed, severity=4.7, phenotype="sclerotic").params
        assert med["attrition_medial_px"] > 5 * med["attrition_lateral_px"]
        assert lat["attrition_lateral_px"] > 5 * lat["attrition_medial_px"]
        a, b = scl["attrition_medial_px"], scl["attrition_lateral_px"]
        assert min(a, b) > 0.6 * max(a, b) > 0
        early = knee_phantoms.generate_knee(seed, severity=2.5, phenotype="sclerotic").params
        assert early["attrition_medial_px"] == early["attrition_lateral_px"] == 0.0
