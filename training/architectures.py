"""Model architectures: one builder function per architecture, hyper-parameters as arguments.

Everything here is built from standard Keras layers. A shipped file may store convolution kernels
int8 (`training.quantize`), so load with
`keras.models.load_model(path, compile=False, custom_objects=imaging.layers.custom_objects())`.

Segmenters
    attention_unet   ours: small U-Net with additive attention gates on the skips (Oktay et al. 2018)
    unet             reference: the plain U-Net of the original design (Ronneberger et al. 2015)
Classifiers (two softmax heads, dict outputs {"as_status", "stage"}, Grad-CAM layer "gradcam_conv")
    dual_head_classifier   ours: compact separable-conv network on the joint-region crop + mask channel
    cnn3_reference         reference: the original design's 3-block CNN with a Flatten/Dense top
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

GRADCAM_LAYER = "gradcam_conv"


# -- building blocks ------------------------------------------------------------
def _conv_bn_relu(x, filters: int, name: str, kernel_size: int = 3):
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _double_conv(x, filters: int, name: str, batch_norm: bool = True):
    """Two 3x3 convolutions; BatchNorm+ReLU (ours) or plain Conv+ReLU (the original U-Net)."""
    for i in (1, 2):
        if batch_norm:
            x = _conv_bn_relu(x, filters, f"{name}_{i}")
        else:
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
    return x


def _attention_gate(skip, gating, inter_filters: int, name: str):
    """Additive attention gate: alpha = sigmoid(psi(relu(W_x skip + W_g gating))); returns skip * alpha.

    `gating` comes from the coarser decoder level and is already upsampled to the skip's size.
    """
    theta_x = layers.Conv2D(inter_filters, 1, use_bias=False, name=f"{name}_theta_x")(skip)
    phi_g = layers.Conv2D(inter_filters, 1, name=f"{name}_phi_g")(gating)
    f = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta_x, phi_g]))
    alpha = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_alpha")(f)
    return layers.Multiply(name=f"{name}_gated")([skip, alpha])   # (H,W,C) * (H,W,1) broadcasts


def _segmentation_head(x, n_classes: int):
    if n_classes == 1:
        return layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return layers.Conv2D(n_classes, 1, activation="softmax", name="mask")(x)


# -- segmenters ------------------------------------------------------------------
def attention_unet(input_shape: Sequence[int] = (128, 128, 1), filters: Sequence[int] = (8, 16, 32, 64),
                   n_classes: int = 1, dropout: float = 0.0, name: str = "attention_unet") -> keras.Model:
    """Attention U-Net (Oktay et al. 2018): encoder levels `filters[:-1]`, bottleneck `filters[-1]`.

    Each decoder step upsamples, gates the encoder skip with an additive attention gate driven by the
    upsampled decoder features, concatenates and applies a BN+ReLU double conv. Output "mask": one
    sigmoid channel (n_classes == 1) or a softmax over n_classes.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    skips = []
    for level, f in enumerate(filters[:-1]):
        x = _double_conv(x, f, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _double_conv(x, filters[-1], "bottleneck")
    if dropout:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(len(filters) - 1)):
        f = filters[level]
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
        x = _conv_bn_relu(x, f, f"dec{level}_upconv", kernel_size=1)
        gated = _attention_gate(skips[level], x, max(f // 2, 4), f"dec{level}_att")
        x = layers.Concatenate(name=f"dec{level}_concat")([gated, x])
        x = _double_conv(x, f, f"dec{level}")
    return keras.Model(inputs, _segmentation_head(x, n_classes), name=name)


def unet(input_shape: Sequence[int] = (128, 128, 1), filters: Sequence[int] = (64, 128, 256, 512),
         n_classes: int = 1, name: str = "unet_reference") -> keras.Model:
    """The plain U-Net of the original design: encoder 64-128-256, bottleneck 512, mirrored decoder.

    Two 3x3 Conv+ReLU per block, 2x2 max-pooling down, 2x2 transposed convolution up, skip concatenation.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    skips = []
    for level, f in enumerate(filters[:-1]):
        x = _double_conv(x, f, f"enc{level}", batch_norm=False)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _double_conv(x, filters[-1], "bottleneck", batch_norm=False)
    for level in reversed(range(len(filters) - 1)):
        f = filters[level]
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level], x])
        x = _double_conv(x, f, f"dec{level}", batch_norm=False)
    return keras.Model(inputs, _segmentation_head(x, n_classes), name=name)


# -- classifiers -----------------------------------------------------------------
def _heads(x, dropout: float):
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return {
        "as_status": layers.Dense(2, activation="softmax", name="as_status")(x),
        "stage": layers.Dense(4, activation="softmax", name="stage")(x),
    }


def dual_head_classifier(input_shape: Sequence[int] = (128, 160, 2), widths: Sequence[int] = (16, 24, 48, 96, 128),
                         dropout: float = 0.3, mask_gate: bool = True,
                         name: str = "dual_head_classifier") -> keras.Model:
    """Compact classifier on the joint-region crop (+ mask channel) with AS-status and stage heads.

    mask_gate (with a 2-channel image+mask input): the image gated by the mask (image * mask) is added
    as a third channel, so the first layer sees the joint band isolated as well as its context.
    Stem: a 3x3 conv (widths[0]) at full resolution, because early lesions are a few pixels across
    and a strided stem would average them away. Then for each middle width: depthwise-separable
    BN+ReLU convs (one in the first block, two after) and 2x2 max-pooling. Last: a plain 3x3 Conv+ReLU
    (widths[-1]) named "gradcam_conv" at 1/2**(len(widths)-2) of the input size (16x20 for 128x160 and
    5 widths). Pooling: global average AND global max, concatenated: one small lesion anywhere in the
    joint makes a scan positive, and a max keeps that evidence where an average dilutes it.
    Then dropout and two softmax heads.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if mask_gate and input_shape[-1] >= 2:
        gated = layers.Multiply(name="mask_gate")([inputs[..., 0:1], inputs[..., 1:2]])
        x = layers.Concatenate(name="with_gated_image")([inputs, gated])
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, w in enumerate(widths[1:-1], start=1):
        for j in ((1,) if i == 1 else (1, 2)):
            x = layers.SeparableConv2D(w, 3, padding="same", use_bias=False, name=f"block{i}_sep{j}")(x)
            x = layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
            x = layers.Activation("relu", name=f"block{i}_relu{j}")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Conv2D(widths[-1], 3, padding="same", activation="relu", name=GRADCAM_LAYER)(x)
    x = layers.Concatenate(name="pooled")([layers.GlobalAveragePooling2D(name="gap")(x),
                                           layers.GlobalMaxPooling2D(name="gmp")(x)])
    return keras.Model(inputs, _heads(x, dropout), name=name)


def cnn3_reference(input_shape: Sequence[int] = (128, 128, 1), dropout: float = 0.5,
                   name: str = "cnn3_reference") -> keras.Model:
    """The original design's CNN: Conv 32/64/128 (3x3 ReLU 'same') + 2x2 max-pool each, Flatten,
    Dense 128 ReLU, Dropout 0.5, two softmax heads. The last conv is "gradcam_conv"."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for i, f in enumerate((32, 64, 128)):
        x = layers.Conv2D(f, 3, padding="same", activation="relu",
                          name=GRADCAM_LAYER if i == 2 else f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    return keras.Model(inputs, _heads(x, dropout), name=name)


BUILDERS = {
    "attention_unet": attention_unet,
    "unet": unet,
    "dual_head_classifier": dual_head_classifier,
    "cnn3_reference": cnn3_reference,
}
