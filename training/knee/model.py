"""The knee KL grader: one compact residual trunk, three heads, an embedding for phenotypes.

Built from standard Keras layers only, so the shipped file loads with plain
`keras.models.load_model(path, compile=False)` (no custom objects needed).

    input "image" (S, S, 1), the knee in canonical orientation (a LEFT knee as radiographed:
        medial compartment on the image left, fibular head on the image right) or mirrored
    stem 3x3/2 conv, then residual stages, each opened by a 3x3 conv that changes the width (stride 2
        in all stages but the last), so the last stage works at S/16; its last 3x3 conv is "gradcam_conv"
    compartment pooling: global average pooling of the image-left and image-right halves of the
        last feature map, concatenated (medial and lateral compartments stay apart in the embedding)
    "embedding": Dense, then ReLU (the penultimate layer); the phenotype clustering reads its
        pre-activation (a unit that is inactive on every knee still varies before the ReLU)
    heads (dict outputs):
        "kl_value"  sigmoid * 4: continuous KL grade (trained with MSE)
        "kl_coral"  P(KL > k) for k = 0..3, CORAL (Cao et al. 2020): one shared weight vector, four
                    biases. The shared slope is a Dense(4) on a scalar whose kernel is held at 1 by a
                    UnitNorm constraint (standard layers only), so the thresholds stay rank-consistent.
        "mirrored"  P(the input is the mirror image of the canonical orientation), i.e. P(right knee)
                    for an unflipped upload; trained with random flips, used to find the orientation
        "embedding" the penultimate features (before the ReLU), exposed so serving needs one call

`contrastive_trainer` wraps the grader for training with an auxiliary self-supervised objective
(SimCLR's NT-Xent on two augmented views of each knee, Chen et al. 2020) besides the grade heads; the
shipped model is the grader alone.

`build` and `compile_model` make and compile it from a `Config`.
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import layers, ops

from tasks.knee import N_GRADES
from training.knee.config import LOSS_WEIGHTS, Config


GRADCAM_LAYER = "gradcam_conv"
EMBEDDING_LAYER = "embedding"


def _conv_bn(x, filters: int, name: str, stride: int = 1, relu: bool = True, kernel: int = 3):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _res_block(x, filters: int, name: str, last_conv_name: str | None = None):
    """Basic residual block (two 3x3 convs, identity shortcut, ReLU after the sum)."""
    shortcut = x
    y = _conv_bn(x, filters, f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=last_conv_name or f"{name}_b_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_b_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def knee_grader(input_size: int = 160, widths: Sequence[int] = (24, 48, 96, 112), blocks: Sequence[int] = (1, 1, 2, 1),
                embedding_dim: int = 64, dropout: float = 0.2, name: str = "knee_grader") -> keras.Model:
    """Compact residual CNN with regression + CORAL + orientation heads on one trunk.

    widths[i] / blocks[i]: channels and residual blocks of stage i. Stage 0 runs at S/4 (stem stride 2,
    then a stride-2 conv), each further stage but the last halves the resolution again; with four
    stages the last runs at S/16 (10x10 for 160 px), where Grad-CAM reads "gradcam_conv".
    """
    inputs = keras.Input(shape=(input_size, input_size, 1), name="image")
    x = _conv_bn(inputs, widths[0] // 2, "stem", stride=2)
    n_stages = len(widths)
    for s, (w, nb) in enumerate(zip(widths, blocks)):
        x = _conv_bn(x, w, f"s{s}_down", stride=2 if s < n_stages - 1 else 1)
        for b in range(nb):
            last = (s == n_stages - 1) and (b == nb - 1)
            x = _res_block(x, w, f"s{s}_b{b}", last_conv_name=GRADCAM_LAYER if last else None)
    fh, fw = x.shape[1], x.shape[2]
    half = fw // 2
    left = layers.Cropping2D(((0, 0), (0, fw - half)), name="pool_left_crop")(x)
    right = layers.Cropping2D(((0, 0), (half, 0)), name="pool_right_crop")(x)
    pooled = layers.Concatenate(name="compartment_pool")([
        layers.GlobalAveragePooling2D(name="gap_left")(left),
        layers.GlobalAveragePooling2D(name="gap_right")(right),
    ])
    if dropout:
        pooled = layers.Dropout(dropout, name="pool_dropout")(pooled)
    emb_linear = layers.Dense(embedding_dim, name=EMBEDDING_LAYER)(pooled)
    emb = layers.Activation("relu", name="embedding_relu")(emb_linear)
    value = layers.Dense(1, activation="sigmoid", name="kl_value_sigmoid")(emb)
    value = layers.Rescaling(float(N_GRADES - 1), name="kl_value")(value)
    score = layers.Dense(1, use_bias=False, name="coral_score")(emb)
    coral = layers.Dense(N_GRADES - 1, activation="sigmoid", kernel_initializer="ones",
                         kernel_constraint=keras.constraints.UnitNorm(axis=0),
                         bias_initializer=keras.initializers.Constant(0.0), name="kl_coral")(score)
    mirrored = layers.Dense(1, activation="sigmoid", name="mirrored")(pooled)
    outputs = {"kl_value": value, "kl_coral": coral, "mirrored": mirrored, "embedding": emb_linear}
    return keras.Model(inputs, outputs, name=name)


def nt_xent(y_true, y_pred, temperature: float = 0.2):
    """NT-Xent per pair: y_pred = concat(z_view1, z_view2) (batch, 2k); y_true is ignored."""
    k = y_pred.shape[-1] // 2
    z1 = y_pred[:, :k] / (ops.norm(y_pred[:, :k], axis=1, keepdims=True) + 1e-8)
    z2 = y_pred[:, k:] / (ops.norm(y_pred[:, k:], axis=1, keepdims=True) + 1e-8)
    z = ops.concatenate([z1, z2], axis=0)
    n = ops.shape(z1)[0]
    sim = ops.matmul(z, ops.transpose(z)) / temperature
    sim = sim - 1e9 * ops.eye(2 * n, dtype=sim.dtype)                  # a view is not its own positive
    targets = ops.concatenate([ops.arange(n, 2 * n), ops.arange(0, n)], axis=0)
    per = keras.losses.sparse_categorical_crossentropy(targets, sim, from_logits=True)
    return (per[:n] + per[n:]) / 2.0


def contrastive_trainer(grader: keras.Model, projection_dim: int = 32) -> keras.Model:
    """Two views in, the grader's heads on view 1 plus "contrast" = the projected embeddings of both views."""
    shape = grader.input_shape[1:]
    v1, v2 = keras.Input(shape=shape, name="view1"), keras.Input(shape=shape, name="view2")
    o1, o2 = grader(v1), grader(v2)
    hidden = layers.Dense(grader.get_layer(EMBEDDING_LAYER).units, activation="relu", name="proj_hidden")
    out = layers.Dense(projection_dim, name="proj_out")
    relu = layers.Activation("relu", name="proj_in_relu")
    z = layers.Concatenate(name="contrast")([out(hidden(relu(o1["embedding"]))), out(hidden(relu(o2["embedding"])))])
    return keras.Model([v1, v2], {"kl_value": o1["kl_value"], "kl_coral": o1["kl_coral"],
                                  "mirrored": o1["mirrored"], "contrast": z}, name="contrastive_trainer")


def build(cfg: Config):
    return knee_grader(cfg.size, cfg.widths, cfg.blocks, cfg.embedding_dim, cfg.dropout)


def compile_model(model, cfg: Config):
    opt = keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)
    model.compile(optimizer=opt,
                  loss={"kl_value": "mse", "kl_coral": "binary_crossentropy", "mirrored": "binary_crossentropy"},
                  loss_weights=LOSS_WEIGHTS)
    return model
