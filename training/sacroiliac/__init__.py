"""Train, evaluate and ship the sacroiliac (AS) models on synthetic phantoms.

    python -m training.sacroiliac [--quick] [--models ID,ID] [--out models/] [--seed 0]

Models (files models/<id>.keras, version 1.0.0):
    sij-attention-unet  segmenter, ours (default)     attention U-Net, Dice + BCE
    sij-unet-ref        segmenter, reference          plain U-Net 64-128-256-512, same data and loss
    sij-dual-head       classifier, ours (default)    joint-region crop + mask channel, two heads
    sij-cnn3-ref        classifier, reference         3-block CNN on the full image, Dense int8

Data: phantoms from `training.phantoms.sacroiliac`, images uint8/255 as the upload path gives them.
Train seeds from SEED_RANGES["train"], model selection on SEED_RANGES["val"], figures on
SEED_RANGES["test"] only, evaluated from the shipped (reloaded) files END TO END: the classifier
gets the crop of the *predicted* mask, exactly as `tasks.sacroiliac.SacroiliacTask.run` does.
Preprocessing is the task's own (`segmenter_input`, `classifier_input`).

`--quick` trains tiny versions (a few dozen images, one epoch) into a temporary or given
--out directory; it refuses to write into the committed models/ directory.

Modules: `data` (phantoms, targets, inputs, batches), `model` (ids, specs, builders, loss), `train`,
`evaluate` (served masks and end-to-end figures), `export` (files, registry entries, cards),
`pipeline` (the run step by step, for the notebook), `__main__` (the command line).
"""
import os

# Quiet TensorFlow's C++ start-up logging before any submodule imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
