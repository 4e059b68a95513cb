"""Train, evaluate and export the knee KL grader and its phenotype catalogue.

    python -m training.knee [--quick] [--out DIR] [--size 160] [--budget-min 55 | --epochs N] [--seed 0]
                            [--stage all|train|export] [--work DIR] [--init CKPT] [--lr LR]
    python -m training.knee --stage export --members WORK1 WORK2 [--out DIR]     (an ensemble, see below)

Model (file models/<id>.keras, id knee-kl-grader, version 1.0.0): `training.knee.model.knee_grader`,
one residual trunk with a regression head (sigmoid * 4, MSE) and a CORAL head, trained together, plus
the orientation head ("mirrored") and the penultimate embedding used for phenotypes.

Data: the REAL radiographs of ../shared/data/knee_kl (JOINTSCAN_DATA_DIR), train split for training,
val split for model selection and the published (validation) figures; never a test split. Images go
through the task's own preprocessing (`tasks.knee.grader_input`, canonical orientation), pre-resized
once into a uint8 cache under /tmp. Augmentation: small rotation, scale, shift, brightness, contrast
and gamma, and a mirror flip with probability 0.5 that is also the target of the "mirrored" head.
Schedule: AdamW with warm-up and cosine decay, either over a number of epochs (--epochs) or over a
wall-clock budget (--budget-min: the cosine runs on elapsed time, so a machine shared with other jobs
still ends with a fully annealed model). Evaluation: test-time flip averaging (the task's own code).

Stages: `train` writes a checkpoint to the work folder (/tmp/jointscan_knee_work); `export` reloads it,
saves the compact file into --out, evaluates the SHIPPED file on val, builds the phenotype catalogue
(training.knee.phenotypes) from the train-split embeddings, registers the model and writes its card.
`export --members W1 W2 ...` exports the graders trained (`--stage train --work Wi`, each with its own seed)
as one ensemble file (training.knee.ensemble): outputs averaged, embeddings side by side. The committed
model is such an ensemble, because one grader's embedding, and so its phenotype clusters, depends on
its training seed.

`--quick` trains a tiny model for one short epoch on a handful of images (knee phantoms when the real
data folder is absent) into a temporary or given --out; it refuses to write into the committed models/.

Modules: `config` (ids, hyper-parameters), `data` (real radiographs, manifests, cache, augmentation),
`model` (the grader), `evaluate` (flip-averaged figures), `train`, `ensemble` (several graders as one
file), `features`, `phenotypes` and `catalogue` (the phenotype catalogue), `export` (files, registry
entry, card, regenerate commands), `phantom` and `phantom_grader` (the phenotype proof on phantoms),
`__main__` (the command line).
"""
import os

# Quiet TensorFlow's C++ start-up logging before any submodule imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
