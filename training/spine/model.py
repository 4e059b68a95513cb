"""The spine segmenters: what each one is and how it trains (`ModelSpec`), the builder and the loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from keras import ops

from tasks.spine import N_CLASSES
from training.architectures import BUILDERS


ATTENTION_UNET, REFERENCE_UNET = "spine-attention-unet", "spine-unet-ref"
ALIASES = {"ours": ATTENTION_UNET, "attention": ATTENTION_UNET, "attention-unet": ATTENTION_UNET, "ref": REFERENCE_UNET, "unet": REFERENCE_UNET, "unet-ref": REFERENCE_UNET}


@dataclass(frozen=True)
class ModelSpec:
    """What one model is and how it trains (the fixed budget is part of the spec)."""

    id: str
    title: str
    architecture: str
    builder: str                     # name in training.architectures.BUILDERS
    builder_kwargs: dict[str, Any]
    input_hw: tuple[int, int]
    epochs: int
    batch_size: int
    lr: float
    gradcam_layer: str
    reference: bool
    default: bool
    description: str
    budget_min: float | None = None      # wall-clock training budget; None: exactly `epochs`
    budget_note: str = ""
    int8_convolutions: bool = False      # ship the convolution kernels int8 (training.quantize)
    dice_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)   # vertebra, disc, canal in the soft Dice
    # a first stage trained from scratch before this spec's own epochs fine-tune it: input_hw, epochs, lr and
    # dice_weights of that stage (None: the spec trains from scratch)
    pretrain: dict[str, Any] | None = None


SPECS: dict[str, ModelSpec] = {
    ATTENTION_UNET: ModelSpec(
        id=ATTENTION_UNET, title="Spine segmenter: Attention U-Net (4 classes)",
        architecture="Attention U-Net, encoder 12-24-48-96, bottleneck 192, BN+ReLU double convs, "
                     "additive attention gates on the skips, softmax over 4 classes",
        builder="attention_unet", builder_kwargs={"filters": (12, 24, 48, 96, 192)},
        # Two stages: 33 epochs from scratch at 240x192 (cheap), then a fine-tune at the dataset's own
        # resolution (320x256), where the thin discs keep their full height, with discs counting double in
        # the soft Dice: they are the smallest structure and the one furthest from its target. A float32
        # epoch at 320x256 costs twice one at 240x192 on 2 cores.
        input_hw=(320, 256), epochs=8, batch_size=8, lr=6e-4, gradcam_layer="dec0_2_relu",
        reference=False, default=True, dice_weights=(1.0, 2.0, 1.0),
        pretrain={"input_hw": (240, 192), "epochs": 33, "lr": 2e-3, "dice_weights": (1.0, 1.0, 1.0)},
        description="Segments vertebrae, intervertebral discs and the spinal canal on a sagittal T2 lumbar "
                    "spine MRI slice (ours; the default)."),
    REFERENCE_UNET: ModelSpec(
        id=REFERENCE_UNET, title="Spine segmenter: U-Net reference (4 classes)",
        architecture="Plain U-Net of the original design: encoder 64-128-256, bottleneck 512, Conv+ReLU "
                     "double convs (no batch norm), transposed-conv upsampling, softmax over 4 classes",
        builder="unet", builder_kwargs={"filters": (64, 128, 256, 512)},
        input_hw=(160, 128), epochs=8, batch_size=8, lr=5e-4, gradcam_layer="dec0_conv2",
        reference=True, default=False, budget_min=13,
        description="The plain U-Net reference (~7.7 M parameters), trained on the same patient split for "
                    "comparison with the Attention U-Net.",
        int8_convolutions=True,          # 7.7 M weights: 15 MB stored float16, under 8 MB with int8 kernels
        budget_note="Fixed compute budget: {budget:.0f} minutes of training wall time on 2 shared CPU cores, "
                    "at {h}x{w} (half the dataset's resolution); that fitted {epochs} epochs (about "
                    "{epoch_min:.1f} minutes per epoch for this 7.7 M-parameter network). Its figures say what "
                    "this architecture reaches in that budget, not its ceiling."),
}


def build(spec: ModelSpec, input_hw: tuple[int, int] | None = None):
    hw = input_hw or spec.input_hw
    return BUILDERS[spec.builder]((hw[0], hw[1], 1), n_classes=N_CLASSES, **spec.builder_kwargs)


def dice_ce_loss(background_weight: float = 0.0, smooth: float = 1.0,
                 foreground_weights: tuple[float, ...] = (1.0, 1.0, 1.0)):
    """Categorical cross-entropy + (1 - soft Dice), Dice averaged over classes computed on the whole
    batch; background enters the Dice average with `background_weight` (0: foreground classes only), each
    foreground class with its weight in `foreground_weights` (vertebra, disc, canal)."""
    weights = np.ones(N_CLASSES, np.float32)
    weights[0] = background_weight
    weights[1:] = np.asarray(foreground_weights, np.float32)
    weights = weights / weights.sum()

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        ce = -ops.mean(ops.sum(y_true * ops.log(y_pred), axis=-1))
        inter = ops.sum(y_true * y_pred, axis=(0, 1, 2))
        denom = ops.sum(y_true, axis=(0, 1, 2)) + ops.sum(y_pred, axis=(0, 1, 2))
        soft_dice = (2.0 * inter + smooth) / (denom + smooth)
        return ce + 1.0 - ops.sum(soft_dice * ops.convert_to_tensor(weights))

    loss.__name__ = "dice_ce"
    return loss
