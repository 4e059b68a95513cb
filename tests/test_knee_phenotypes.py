"""Knee phenotypes: HDBSCAN clustering within a grade, the assignment rule (including noise), the
catalogue files, and the description of clusters, on small synthetic and phantom sets (no TensorFlow)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from tasks.knee_catalogue import load_catalogue, remove_directions
from training.knee.features import feature_table, knee_features, ridge_in_valley
from training.knee.phantom import to_input
from training.knee.phenotypes import (N_MEDOIDS, THUMB, build_catalogue, describe, fit_grade, save_catalogue,
                                      severity_basis)
from training.phantoms import knee as knee_phantoms
from training.phantoms.knee import generate_knee


def blobs(n_per=40, centres=((0, 0), (6, 0), (0, 6)), dim=6, seed=0, spread=0.6):
    """Embeddings of one grade: three phenotype blobs in the first two dimensions, noise elsewhere."""
    rng = np.random.default_rng(seed)
    E, y = [], []
    for k, c in enumerate(centres):
        pts = rng.normal(0, spread, (n_per, dim))
        pts[:, :2] += c
        E.append(pts)
        y += [k] * n_per
    return np.concatenate(E), np.array(y)


def test_fit_grade_recovers_blobs_and_tunes_min_cluster_size():
    E, y = blobs()
    gc = fit_grade(E, grade=2, n_components=4)
    kept = gc.labels >= 0
    assert gc.n_clusters == 3
    assert kept.mean() > 0.8
    assert adjusted_rand_score(y[kept], gc.labels[kept]) > 0.95
    assert len(gc.tuning) >= 2 and gc.min_cluster_size in [t.get("min_cluster_size") for t in gc.tuning]
    assert "null_scores" in gc.tuning[-1] and gc.tuning[-1]["score"] > max(gc.tuning[-1]["null_scores"])
    # labels are ordered by cluster size, reach and median link are positive
    sizes = [(gc.labels == c).sum() for c in range(gc.n_clusters)]
    assert sizes == sorted(sizes, reverse=True)
    assert (gc.reach > 0).all() and (gc.link > 0).all() and (gc.link <= gc.reach).all()


def test_assignment_member_centre_and_noise_cases():
    E, y = blobs()
    cat = build_catalogue(E, np.full(len(E), 2), n_components=4)
    gc = cat.grades[2]
    # a point at the centre of each blob joins that blob's cluster with full strength
    for k, centre in enumerate(((0, 0), (6, 0), (0, 6))):
        x = np.zeros((1, E.shape[1]))
        x[0, :2] = centre
        a = cat.assign(x, 2)
        assert a.cluster >= 0 and a.strength == pytest.approx(1.0)
        members = y[gc.labels == a.cluster]
        assert np.bincount(members).argmax() == k
    # far away from everything: noise; halfway between two blobs: noise
    far = np.full((1, E.shape[1]), 40.0)
    between = np.zeros((1, E.shape[1]))
    between[0, :2] = (3.0, 0.0)
    for x in (far, between):
        a = cat.assign(x, 2)
        assert a.cluster == -1 and a.strength == 0.0
    # on the edge of a cluster the strength falls below 1 but stays positive
    edge = np.zeros((1, E.shape[1]))
    edge[0, :2] = (0.0, 1.5)
    a = cat.assign(edge, 2)
    centre = cat.assign(np.zeros((1, E.shape[1])), 2)
    assert a.cluster == centre.cluster >= 0                  # still the (0, 0) blob's cluster
    assert 0.0 < a.strength < 1.0
    # a grade the catalogue does not know: noise
    assert cat.assign(far, 4).cluster == -1


def test_training_points_reassign_to_their_own_cluster():
    E, _ = blobs(seed=3)
    cat = build_catalogue(E, np.full(len(E), 1), n_components=4)
    gc = cat.grades[1]
    got = np.array([a.cluster for a in cat.assign_many(E, np.full(len(E), 1))])
    members = gc.labels >= 0
    assert (got[members] == gc.labels[members]).mean() > 0.95


def test_severity_directions_are_projected_out():
    rng = np.random.default_rng(1)
    E, y = blobs(dim=5, seed=2)
    direction = rng.normal(size=5)
    direction /= np.linalg.norm(direction)
    # a strong severity spread along `direction` would split the blobs; projecting it out removes it
    spread = E + np.outer(rng.uniform(-8, 8, len(E)), direction)
    basis = severity_basis([direction])
    gc = fit_grade(spread, grade=3, basis=basis, n_components=4)
    kept = gc.labels >= 0
    assert adjusted_rand_score(y[kept], gc.labels[kept]) > 0.9
    np.testing.assert_allclose(remove_directions(spread, basis) @ direction, 0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_single_blob_has_no_phenotypes(seed):
    """HDBSCAN splits any blob a little; the Gaussian null check refuses such clusters."""
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(200, 12)) * np.linspace(0.3, 2.0, 12)
    gc = fit_grade(E, grade=0)
    assert gc.n_clusters == 0 and (gc.labels == -1).all()
    cat = build_catalogue(E, np.zeros(len(E), int))
    assert cat.meta["grades"][0]["n_clusters"] == 0
    assert cat.assign(E[:1], 0).cluster == -1


def test_catalogue_files_round_trip(tmp_path):
    E, y = blobs()
    imgs = np.random.default_rng(0).uniform(0, 1, (len(E), 32, 32)).astype(np.float32)
    cams = np.random.default_rng(1).uniform(0, 1, (len(E), 4, 4)).astype(np.float32)
    feats = {"jsw_medial": y.astype(float) + np.random.default_rng(2).normal(0, 0.1, len(y)),
             "texture": np.zeros(len(y))}
    grades = np.where(np.arange(len(E)) % 2 == 0, 2, 3)
    cat = build_catalogue(E, grades, imgs, cams, feats, ids=[f"k{i}" for i in range(len(E))],
                             meta={"model_id": "x"}, n_components=4,
                             feature_text={"jsw_medial": ("narrower medial joint space", "wider medial joint space")})
    model = tmp_path / "knee-x.keras"
    jpath, npath = save_catalogue(cat, model)
    assert jpath.name == "knee-x.catalogue.json" and npath.name == "knee-x.catalogue.npz"
    back = load_catalogue(model)
    assert back.meta["grades"] == cat.meta["grades"]
    for g in (2, 3):
        a, b = cat.grades[g], back.grades[g]
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.points, b.points)
        q = E[grades == g][:10] + 0.05
        assert [(x.cluster, x.strength) for x in cat.assign_many(q, np.full(10, g))] == \
               [(x.cluster, x.strength) for x in back.assign_many(q, np.full(10, g))]
    c0 = back.cluster_meta(2, 0)
    assert c0["name"] == "KL2-A" and len(c0["medoid_ids"]) == N_MEDOIDS
    assert back.images["g2_c0_medoids"].shape == (N_MEDOIDS, THUMB, THUMB)
    assert "joint space" in c0["description"] or c0["description"].startswith("No measured")


def test_describe_words_the_largest_difference():
    feats = {"jsw_medial": np.r_[np.full(10, 1.0), np.full(30, 3.0)], "texture": np.r_[np.full(10, 0.5), np.full(30, 0.5)]}
    z, text = describe(feats, np.arange(40), np.arange(10),
                          {"jsw_medial": ("narrower medial joint space", "wider medial joint space")}, grade=3)
    assert z["jsw_medial"] < -1 and z["texture"] == 0.0
    assert "narrower medial joint space" in text and "KL 3" in text


def test_phantom_features_follow_the_hidden_phenotype():
    """On a small phantom set the image measurements that word the catalogue point the right way."""
    cases = [generate_knee(900 + i, grade=3, phenotype=p) for i in range(6) for p in ("medial", "lateral", "sclerotic")]
    F = feature_table(np.stack([to_input(c) for c in cases]).astype(np.float32) / 255.0)
    ph = np.array([c.phenotype for c in cases])
    assert F["jsw_medial"][ph == "medial"].mean() < F["jsw_medial"][ph == "lateral"].mean()
    assert F["jsw_lateral"][ph == "lateral"].mean() < F["jsw_lateral"][ph == "medial"].mean()
    assert F["texture"][ph == "sclerotic"].mean() > F["texture"][ph != "sclerotic"].mean()


def test_calcified_line_in_the_joint_space_is_measured():
    """The chondrocalcinosis line (the osteophyte-dominant phantom's trait) raises the calcification
    measurement of both compartments; the same knee drawn without it measures (near) zero."""
    valley = np.array([[0.9], [0.6], [0.3], [0.2], [0.4], [0.8]], np.float32)
    assert ridge_in_valley(valley)[0] == 0.0                               # a plain valley: no ridge
    lined = np.array([[0.9], [0.3], [0.5], [0.2], [0.4], [0.8]], np.float32)
    assert ridge_in_valley(lined)[0] == pytest.approx(0.2)                 # 0.5 above the darker side's 0.3
    for seed in (31, 32, 33):
        r_anat, r_acq, _, _, r_les, _ = knee_phantoms._streams(seed)
        anat, acq = knee_phantoms._anatomy(r_anat), knee_phantoms._acquisition(r_acq)
        les = knee_phantoms.lesions(1.5, "osteophyte", r_les)
        feats = {}
        for name, calc in (("with", les["calc"]), ("without", 0.0)):
            img, _ = knee_phantoms._render(anat, {**les, "calc": calc}, acq, np.random.default_rng(seed), knee_phantoms.SIZE)
            case = knee_phantoms.KneeCase(img, 1, 1.5, "osteophyte", "L", 0.0, {})
            feats[name] = knee_features(to_input(case) / 255.0)
        for side in ("medial", "lateral"):
            assert feats["without"][f"calcification_{side}"] < 0.01
        assert max(feats["with"]["calcification_medial"], feats["with"]["calcification_lateral"]) > 0.02
