"""Several knee graders as ONE flat Keras graph: the shipped knee model, and the phantom proof's.

Why: the phenotype clusters live in the grader's embedding, and one grader's embedding depends on its
training seed. On 1500 validation phantoms, six phantom graders (seeds 0-5) alone reached ARIs as low as
0.66 at KL 1-4 (and 0.0 at KL 0); side by side, the lowest KL 1-4 ARI was 0.73 over their 15 pairs and
0.875 over their 20 triples, and 13 of the triples reached 0.8 at KL 0 too
(benchmarks/knee_phenotype_seeds.py). The grade heads are averaged as well (a plain ensemble: on real
val knees three graders gave QWK 0.812 against 0.796-0.802 alone).

    input "image" (S, S, 1), shared by every member
    member i: the grader's own layers, renamed "m{i}_<name>" (weights copied), so the file is one
        functional graph of standard layers and loads with plain `keras.models.load_model`
    "kl_value", "kl_coral", "mirrored": the members' outputs averaged
    "embedding": the members' embeddings side by side, member i scaled by scales[i], so every member
        weighs the same in the phenotype geometry (scales from `embedding_scales`, fixed at export)
    Grad-CAM layers: every member's "m{i}_gradcam_conv" (`gradcam_layers`); the ensemble's map is the
        Grad-CAM of the averaged score over all of them (imaging.gradcam sums the members' maps before
        keeping the positive evidence)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from training.knee_model import EMBEDDING_LAYER, GRADCAM_LAYER

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
    import keras

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
    import keras
    from keras import layers

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
    from tasks.knee_catalogue import remove_directions

    E = remove_directions(embeddings, basis)
    E = E - E.mean(axis=0)
    return float(1.0 / max(np.sqrt((E ** 2).sum(axis=1).mean()), 1e-12))


def embedding_scales(members: Sequence, images_u8: np.ndarray) -> list[float]:
    """Per member, `embedding_scale` of its embeddings of these knees: with it every member spreads the
    knees equally in the concatenation."""
    from training.knee import predict_tta
    from training.knee_ship import severity_basis_of

    return [embedding_scale(predict_tta(m, images_u8)["embedding"], severity_basis_of(m)) for m in members]
