"""Train, evaluate and ship the hand models (finger-joint detector, two-stage GUSS scorers) on phantoms.

    python -m training.hand [--quick] [--out models/] [--patients 1000] [--models ID,ID] [--seed 0]

Models (files models/<id>.keras, version 1.0.0):
    hand-joint-detector        detector (default)   CenterNet-style heatmap per joint + box + laterality,
                                                    with a Mahalanobis out-of-distribution output
    hand-guss-scorer           scorer (default)     stage 1 peak vs not + stage 2 CORAL (20 thresholds),
                                                    plus CORAL heads for plate and space
    hand-guss-scorer-position  scorer               the same, told which joint it scores (one-hot planes)

Data: the first --patients patients of `training.phantoms.hand.PATIENT_POOL`, every visit of each,
split by patient 80/10/10 stratified on the patient-level peak/non-peak label (`split_of`). Training
uses the train patients, model selection the val patients, and the figures the test patients only,
computed from the shipped (reloaded) files END TO END as the app runs them: detector on the whole
radiograph, crops from the DETECTED boxes, the task's own preprocessing and decoding (tasks.hand).

Scorer training: two streams per step, each drawn with replacement and freshly augmented on every
draw (horizontal flip, rotation within 15 degrees, scale within 10%, box jitter, CLAHE half the time):
    stage 1  all training joints, binary cross-entropy with inverse-frequency class weights;
    stage 2  non-peak joints only, drawn with probability inversely proportional to the frequency of
             their GUSS value; CORAL loss on the GUSS head (20 thresholds) and on the plate and space
             heads (10 thresholds each).

`--quick` trains tiny versions into a temporary or given --out directory (never models/).

Modules: `config` (model ids and budgets), `data` (phantoms, detector targets, crops, augmentation),
`model` (builders, losses), `evaluate` (decoding and end-to-end figures), `train`, `export` (files,
registry entries, cards), `pipeline` (the whole run), `__main__` (the command line).
"""
import os

# Quiet TensorFlow's C++ start-up logging before any submodule imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
