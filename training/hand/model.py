"""Keras builders for the hand task: a CenterNet-style joint detector and the two-stage GUSS scorer.

Standard Keras layers only (the saved files load with `keras.models.load_model(path, compile=False)`
and no custom objects); the separable BN+ReLU blocks follow `training.architectures`' compact
classifier. No block there takes a stride, which both stems here need, so none is imported.

joint_detector      one centre heatmap per joint class (PIP2..DIP5) at 1/4 of the input, a box head
                    (width, height, sub-cell offset) and a laterality head (P(right hand))
guss_scorer         shared compact CNN on a 64x64 joint crop with
                      "peak"   stage 1: sigmoid P(GUSS == 200)
                      "guss"   stage 2: CORAL over 20 thresholds (GUSS >= 10, ..., >= 200)
                      "plate", "space": CORAL over 10 thresholds (>= 10 ... >= 100) per compartment
                    position-aware variant: 8 extra constant input channels, the one-hot joint identity

Also the detector's focal loss and its out-of-distribution output.
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from training.hand.data import N_CLASSES


GUSS_THRESHOLDS = 20          # >= 10, 20, ..., 200
COMPARTMENT_THRESHOLDS = 10   # >= 10, 20, ..., 100
SCORER_GRADCAM_LAYER = "gradcam_conv"
DETECTOR_GRADCAM_LAYER = "det_features"


def _sep_bn_relu(x, filters: int, name: str, strides: int = 1):
    x = layers.SeparableConv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_sep")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def joint_detector(input_size: int = 256, widths: Sequence[int] = (16, 24, 32, 48, 64), head_width: int = 32,
                   n_classes: int = N_CLASSES, name: str = "hand_joint_detector") -> keras.Model:
    """CenterNet-style detector (Zhou et al. 2019, "Objects as Points"), small.

    Encoder: 3x3 stride-2 stem, then one stride-2 separable block per further width (1/32 at the
    bottleneck for 5 widths, so every output sees the whole hand: naming a finger needs the thumb).
    Decoder: bilinear upsampling with additive skips back to 1/4 of the input.
    Outputs: "heatmap" (S/4, S/4, n_classes) sigmoid centre maps; "box" (S/4, S/4, 4): width and height
    in input pixels / 32 (ReLU) and the sub-cell centre offset (sigmoid); "side" (1) sigmoid P(right hand)
    from the pooled bottleneck.
    """
    inputs = keras.Input(shape=(input_size, input_size, 1), name="image")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)  # 1/2
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    skips = []
    for i, w in enumerate(widths[1:], start=1):
        x = _sep_bn_relu(x, w, f"enc{i}a", strides=2)                    # 1/4, 1/8, ...
        x = _sep_bn_relu(x, w, f"enc{i}b")
        skips.append(x)
    bottleneck = _sep_bn_relu(x, widths[-1], "bottleneck", strides=1)
    side = layers.GlobalAveragePooling2D(name="side_pool")(bottleneck)
    side = layers.Dense(16, activation="relu", name="side_fc")(side)
    side = layers.Dense(1, activation="sigmoid", name="side")(side)
    x = bottleneck
    for i in range(len(skips) - 2, -1, -1):                              # back up to 1/4 (skips[0])
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{i}_up")(x)
        x = layers.Conv2D(skips[i].shape[-1], 1, use_bias=False, name=f"dec{i}_proj")(x)
        x = layers.Add(name=f"dec{i}_add")([x, skips[i]])
        x = _sep_bn_relu(x, max(head_width, skips[i].shape[-1]), f"dec{i}")
    x = layers.Conv2D(head_width, 3, padding="same", activation="relu", name=DETECTOR_GRADCAM_LAYER)(x)
    heat = layers.Conv2D(head_width, 3, padding="same", activation="relu", name="heat_conv")(x)
    heat = layers.Conv2D(n_classes, 1, activation="sigmoid", name="heatmap",
                         bias_initializer=keras.initializers.Constant(-4.6))(heat)   # prior 0.01 (CenterNet)
    box = layers.Conv2D(head_width, 3, padding="same", activation="relu", name="box_conv")(x)
    wh = layers.Conv2D(2, 1, activation="relu", name="box_wh")(box)
    off = layers.Conv2D(2, 1, activation="sigmoid", name="box_offset")(box)
    box = layers.Concatenate(name="box")([wh, off])
    return keras.Model(inputs, {"heatmap": heat, "box": box, "side": side}, name=name)


def _coral_head(features, n_thresholds: int, name: str):
    """CORAL (Cao et al. 2020): one shared logit g(x) plus a learned bias per threshold, sigmoid.

    The Dense over the scalar g has its kernel fixed at 1 (initialised to ones, UnitNorm keeps a 1x1
    kernel at exactly +1), so logit_k = g(x) + b_k: rank-consistent by construction of the weights.
    """
    g = layers.Dense(1, use_bias=False, name=f"{name}_logit")(features)
    return layers.Dense(n_thresholds, activation="sigmoid", kernel_initializer="ones",
                        kernel_constraint=keras.constraints.UnitNorm(axis=0), name=name)(g)


def guss_scorer(input_size: int = 64, widths: Sequence[int] = (16, 32, 48, 64), position_aware: bool = False,
                dropout: float = 0.2, name: str | None = None) -> keras.Model:
    """Two-stage GUSS scorer on a square joint crop.

    Stem 3x3 stride-2 conv (widths[0]); per middle width two separable BN+ReLU convs, with 2x2
    max-pooling between them; a 3x3 conv "gradcam_conv" (widths[-1]) at 1/4 of the input for the
    default widths (16x16 for a 64 px crop); global average pooling; dropout; a 64-unit layer; heads.
    Position-aware: the input has 1 + 8 channels (crop, then the one-hot joint identity as constant
    planes); the pooled input (its one-hot part) is embedded and joined to the pooled features.
    """
    channels = 1 + (N_CLASSES if position_aware else 0)
    inputs = keras.Input(shape=(input_size, input_size, channels), name="image")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)  # 1/2
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, w in enumerate(widths[1:-1], start=1):
        x = _sep_bn_relu(x, w, f"block{i}a")
        x = _sep_bn_relu(x, w, f"block{i}b")
        if i < len(widths) - 2:
            x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Conv2D(widths[-1], 3, padding="same", activation="relu", name=SCORER_GRADCAM_LAYER)(x)
    f = layers.GlobalAveragePooling2D(name="gap")(x)
    if position_aware:
        pos = layers.GlobalAveragePooling2D(name="input_pool")(inputs)   # [mean intensity, one-hot(8)]
        pos = layers.Dense(16, activation="relu", name="position_embed")(pos)
        f = layers.Concatenate(name="features_with_position")([f, pos])
    if dropout:
        f = layers.Dropout(dropout, name="head_dropout")(f)
    f = layers.Dense(64, activation="relu", name="head_fc")(f)
    outputs = {
        "peak": layers.Dense(1, activation="sigmoid", name="peak")(f),
        "guss": _coral_head(f, GUSS_THRESHOLDS, "guss"),
        "plate": _coral_head(f, COMPARTMENT_THRESHOLDS, "plate"),
        "space": _coral_head(f, COMPARTMENT_THRESHOLDS, "space"),
    }
    return keras.Model(inputs, outputs, name=name or ("guss_scorer_position" if position_aware else "guss_scorer"))




def focal_loss(tf, y, p):
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of centres."""
    p = tf.clip_by_value(p, 1e-4, 1 - 1e-4)
    pos = tf.cast(tf.equal(y, 1.0), tf.float32)
    neg = 1.0 - pos
    pos_loss = -tf.math.log(p) * tf.square(1 - p) * pos
    neg_loss = -tf.math.log(1 - p) * tf.square(p) * tf.pow(1 - y, 4) * neg
    n = tf.maximum(tf.reduce_sum(pos), 1.0)
    return (tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss)) / n
