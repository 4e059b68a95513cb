"""The sacroiliac models: ids, roles, input specs, the builders and the segmentation loss."""
from __future__ import annotations

from typing import Any

from keras import ops

from training.architectures import attention_unet, cnn3_reference, dual_head_classifier, unet
from training.sacroiliac.data import SEG_SIZE


DEFAULT_MODELS = ("sij-attention-unet", "sij-dual-head")
REFERENCES = ("sij-unet-ref", "sij-cnn3-ref")
ALL_MODELS = ("sij-attention-unet", "sij-unet-ref", "sij-dual-head", "sij-cnn3-ref")   # training order
SEGMENTERS = ("sij-attention-unet", "sij-unet-ref")
PAIRED_SEGMENTER = {"sij-dual-head": "sij-attention-unet", "sij-cnn3-ref": "sij-unet-ref"}
COUNTERPART = {"sij-attention-unet": "sij-unet-ref", "sij-unet-ref": "sij-attention-unet",
               "sij-dual-head": "sij-cnn3-ref", "sij-cnn3-ref": "sij-dual-head"}
CLASSIFIER_SPECS: dict[str, dict[str, Any]] = {
    "sij-dual-head": {"shape": [128, 160, 2], "channels": ["image", "mask"], "crop": "joint_region",
                      "tta": "hflip"},
    "sij-cnn3-ref": {"shape": [128, 128, 1], "channels": ["image"], "crop": "full"},
}
SEGMENTER_SPEC = {"shape": [SEG_SIZE, SEG_SIZE, 1], "channels": ["image"], "crop": "full"}


def build(model_id: str, quick: bool = False):
    if model_id == "sij-attention-unet":
        return attention_unet((SEG_SIZE, SEG_SIZE, 1), name="sij_attention_unet")
    if model_id == "sij-unet-ref":
        filters = (8, 16, 32, 64) if quick else (64, 128, 256, 512)
        return unet((SEG_SIZE, SEG_SIZE, 1), filters=filters, name="sij_unet_ref")
    if model_id == "sij-dual-head":
        return dual_head_classifier(tuple(CLASSIFIER_SPECS[model_id]["shape"]), name="sij_dual_head")
    if model_id == "sij-cnn3-ref":
        return cnn3_reference(tuple(CLASSIFIER_SPECS[model_id]["shape"]), name="sij_cnn3_ref")
    raise ValueError(f"unknown model id {model_id!r}; known: {', '.join(ALL_MODELS)}")


def dice_bce_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice loss per image + binary cross-entropy (targets may be soft fractions)."""
    y_pred = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
    bce = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
    bce = ops.mean(bce, axis=(1, 2, 3))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    denom = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return bce + 1.0 - (2.0 * inter + smooth) / (denom + smooth)
