"""Several knee graders as ONE flat Keras graph: the shipped knee model, and the phantom proof's.

Why: the phenotype clusters live in the grader's embedding, and one grader's embedding depends on its
training seed; side by side, several graders give clusters that depend far less on any one seed
(benchmarks/knee_phenotype_seeds.py measures it). The grade heads are averaged as well.

    input "image" (S, S, 1), shared by every member
    member i: the grader's own layers, renamed "m{i}_<name>" (weights copied), so the file is one
        functional graph of standard layers and loads with plain `keras.models.load_model`
    "kl_value", "kl_coral", "mirrored": the members' outputs averaged
    "embedding": the members' embeddings side by side, member i scaled by scales[i], so every member
        weighs the same in the phenotype geometry (scales from `embedding_scales`, fixed at export)
    Grad-CAM layers: every member's "m{i}_gradcam_conv" (`gradcam_layers`); the ensemble's map is the
        Grad-CAM of the averaged score over all of them (imaging.gradcam sums the members' maps before
        keeping the positive evidence)

`severity_basis_of` gives the embedding directions the grade heads read, per member.
"""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import layers

from tasks.knee_catalogue import remove_directions
from training.knee.evaluate import predict_tta
from training.knee.model import EMBEDDING_LAYER, GRADCAM_LAYER
from training.knee.phenotypes import severity_basis


HEADS = ("kl_value", "kl_coral", "mirrored")


def member_prefix(i: int) -> str:
    return f"m{i}_"


def gradcam_layers(model) -> list[str]:
    """The Grad-CAM layer names of a single grader (["gradcam_conv"]) or of an ensemble (one per member)."""
    names = [layer.name for layer in model.layers if layer.name.endswith(GRADCAM_LAYER)]
    if not names:
        raise ValueError(f"model {model.name} has no {GRADCAM_LAYER!r} layer")
    return sorted(names, key=lambda n: int(n[1:n.index("_")]) if n != GRADCAM_LAYER else -1)   # m2 before m10


def member_prefixes(model) -> list[str]:
    """"" for a single grader, ["m0_", "m1_", ...] for an ensemble, in member order."""
    return [name[: -len(GRADCAM_LAYER)] for name in gradcam_layers(model)]


def _renamed_copy(member, prefix: str, inputs):
    """`member`'s graph rebuilt on `inputs` with every layer renamed prefix + name, weights copied."""
    def clone_layer(layer):
        config = layer.get_config()
        config["name"] = prefix + layer.name
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(member, input_tensors=inputs, clone_function=clone_layer)
    for layer in member.layers:
        if layer.weights:
            copy.get_layer(prefix + layer.name).set_weights(layer.get_weights())
    return copy


def combine(members: Sequence, scales: Sequence[float], name: str = "knee_grader_ensemble"):
    """One functional model from graders of the same input size (see the module docstring)."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two graders")
    if len(scales) != len(members):
        raise ValueError("one embedding scale per member")
    shape = tuple(members[0].input_shape[1:])
    if any(tuple(m.input_shape[1:]) != shape for m in members):
        raise ValueError(f"members differ in input size: {[tuple(m.input_shape[1:]) for m in members]}")
    inputs = keras.Input(shape=shape, name="image")
    copies = [_renamed_copy(m, member_prefix(i), inputs) for i, m in enumerate(members)]
    outs = [c.output for c in copies]
    merged = {h: layers.Average(name=h)([o[h] for o in outs]) for h in HEADS}
    merged["embedding"] = layers.Concatenate(name=EMBEDDING_LAYER)([
        layers.Rescaling(float(s), name=f"{member_prefix(i)}embedding_scale")(o["embedding"])
        for i, (o, s) in enumerate(zip(outs, scales))])
    return keras.Model(inputs, merged, name=name)


def embedding_scale(embeddings: np.ndarray, basis: np.ndarray) -> float:
    """1 / the root-mean-square length of the centred embeddings once the severity directions are removed."""
    E = remove_directions(embeddings, basis)
    E = E - E.mean(axis=0)
    return float(1.0 / max(np.sqrt((E ** 2).sum(axis=1).mean()), 1e-12))


def embedding_scales(members: Sequence, images_u8: np.ndarray) -> list[float]:
    """Per member, `embedding_scale` of its embeddings of these knees: with it every member spreads the
    knees equally in the concatenation."""
    return [embedding_scale(predict_tta(m, images_u8)["embedding"], severity_basis_of(m)) for m in members]


def severity_basis_of(model) -> np.ndarray:
    """The embedding directions the grade heads read (regression and CORAL kernels), orthonormalised.
    For an ensemble, each member's directions in its own block of the concatenated embedding."""
    prefixes = member_prefixes(model)
    dims = [model.get_layer(p + "embedding").units for p in prefixes]
    vectors = []
    for i, p in enumerate(prefixes):
        for layer in ("kl_value_sigmoid", "coral_score"):
            v = np.zeros(sum(dims))
            v[sum(dims[:i]):sum(dims[:i + 1])] = model.get_layer(p + layer).get_weights()[0][:, 0]
            vectors.append(v)
    return severity_basis(vectors)
