"""Train, evaluate and export the lumbar spine MRI segmenters.

    python -m training.spine                                   # both models into models/ (~40 min, 2 cores)
    python -m training.spine --models spine-attention-unet     # the attention U-Net only
    python -m training.spine --quick --out /tmp/spine-models   # tiny smoke run (tests, notebook quick mode)

Data: `<JOINTSCAN_DATA_DIR>/spine_mri/{images,masks}/<patient>_t2_SPACE_slice<N>.png`
(default data dir: the repository's parent / "shared" / "data"), or any manifest CSV
with the columns image_path, mask_path, patient (relative paths are relative to the
CSV), so a clinic can train on its own slices. Masks hold the dataset's values
0 background, 76 vertebra, 29 disc, 150 canal (see tasks.spine.DATASET_VALUES).

The split is by patient, seeded: about 80 % of the patients train, the rest validate;
no patient has slices on both sides. Preprocessing is `tasks.spine.spine_input`, the
same function the app serves with; the validation figures are measured on the
reloaded shipped (float16-stored) file, at the masks' own resolution, through
`tasks.spine.labels_from_probs`, exactly as the app predicts. No checkpoint is chosen
on the validation patients: each model trains for a fixed schedule and its last
weights ship.

Modules: `data` (folder or manifest, patient split, slices, augmentation), `model` (specs, builder,
loss), `evaluate` (Dice as served), `train`, `export` (files, registry entries, cards), `__main__`
(the command line).
"""
