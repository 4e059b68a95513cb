"""Train, evaluate and export the lumbar spine MRI segmenters.

    python -m training.spine                                   # both models into models/ (~40 min, 2 cores)
    python -m training.spine --models spine-attention-unet     # the attention U-Net only
    python -m training.spine --quick --out /tmp/spine-models   # tiny smoke run (tests, notebook quick mode)
    python -m training.spine --models ours --work /tmp/spine-work   # resumable: run it again to go on
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import keras

from training.export import sha256_file
from training.spine.data import (SEED, VAL_FRACTION, dataset_dir, manifest_from_folder, patient_split,
                                 read_manifest, split_rows)
from training.spine.export import _command, export_one, write_cards
from training.spine.model import ALIASES, ATTENTION_UNET, REFERENCE_UNET, SPECS
from training.spine.train import cpu_computes_bfloat16, train_one
from training.toolbox.runs import REPO_ROOT


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.spine", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[ATTENTION_UNET, REFERENCE_UNET],
                   help=f"which models to train: {ATTENTION_UNET} (alias ours), {REFERENCE_UNET} (alias ref)")
    p.add_argument("--out", default=str(REPO_ROOT / "models"), help="models folder (registry.json, cards/)")
    p.add_argument("--manifest", help="CSV with image_path, mask_path, patient (default: the shared data folder)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 patients, 8 slices each, 1 epoch, 64x48 input; for tests and the notebook")
    p.add_argument("--epochs", type=int,
                   help="train every chosen model for exactly this many epochs (no time budget)")
    p.add_argument("--budget-min", type=float,
                   help="wall-clock training budget per model in minutes (default: each model's own; "
                        "the epochs that fit, at most the model's maximum, are run and recorded)")
    p.add_argument("--work", help="folder for a resumable run: a stopped run started again with the same "
                                   "--work goes on from its last finished epoch (one subfolder per model)")
    p.add_argument("--init", help="a model file that stands for a two-stage model's first stage (its "
                                   "from-scratch training is skipped; the fine-tune starts from these weights)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--cards-only", action="store_true", help="only rewrite the spine model cards in --out")
    args = p.parse_args(argv)
    if args.cards_only:
        write_cards(Path(args.out))
        return 0

    chosen = []
    for name in args.models:
        mid = ALIASES.get(name, name)
        if mid not in SPECS:
            p.error(f"unknown model {name!r}; choose from {', '.join(SPECS)}")
        chosen.append(mid)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.manifest:
        rows = read_manifest(args.manifest)
        data_desc = f"manifest {args.manifest}"
    else:
        folder = dataset_dir()
        if not folder.is_dir():
            print(f"spine data not found at {folder}; set JOINTSCAN_DATA_DIR", file=sys.stderr)
            return 2
        rows = manifest_from_folder(folder)
        data_desc = ("SPIDER lumbar spine MRI (van der Graaf et al., Scientific Data 2024, CC BY 4.0): "
                     f"{len(rows)} sagittal T2 SPACE slices of {len({r['patient'] for r in rows})} patients, "
                     "downscaled by 2 to 256x320, masks of vertebrae, discs and spinal canal")
    train_p, val_p = patient_split([r["patient"] for r in rows], args.val_fraction, args.seed)
    if args.quick:
        train_p, val_p = train_p[:2], val_p[:2]
        keep = {}
        for r in rows:
            if r["patient"] in set(train_p + val_p):
                keep.setdefault(r["patient"], []).append(r)
        rows = [r for group in keep.values() for r in group[:8]]
        data_desc += " (quick smoke subset: 4 patients, 8 slices each)"
    train_rows, val_rows = split_rows(rows, val_p)
    print(f"patients: {len(train_p)} train, {len(val_p)} validation ({', '.join(val_p)}); "
          f"slices: {len(train_rows)} train, {len(val_rows)} validation", flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    mixed = cpu_computes_bfloat16()
    for mid in chosen:
        spec = SPECS[mid]
        hw = (64, 48) if args.quick else spec.input_hw
        epochs = args.epochs or (1 if args.quick else spec.epochs)
        budget_min = None if (args.epochs or args.quick) else (args.budget_min or spec.budget_min)
        init, pretrain = None, None
        if spec.pretrain:
            pre = spec.pretrain
            recorded = {k: v for k, v in pre.items() if k != "epochs"}      # epochs_run says what ran
            if args.init:                              # the first stage's result is given
                init = keras.models.load_model(args.init, compile=False).get_weights()
                pretrain = {**recorded, "epochs_run": pre["epochs"], "from_file": Path(args.init).name,
                            "sha256": sha256_file(Path(args.init))}
                log(f"[{mid}] first stage from {args.init}")
            else:
                pre_hw = hw if args.quick else pre["input_hw"]
                first, _, pre_wall, pre_ran = train_one(
                    spec, train_rows, val_rows, epochs=1 if args.quick else pre["epochs"],
                    input_hw=pre_hw, seed=args.seed, mixed_precision=mixed,
                    lr=pre["lr"], dice_weights=pre["dice_weights"],
                    work=Path(args.work) / f"{mid}-pretrain" if args.work else None, log=log)
                init = first.get_weights()
                pretrain = {**recorded, "input_hw": pre_hw, "epochs_run": pre_ran, "wall_time_s": round(pre_wall, 1)}
                del first
        model, history, wall, ran = train_one(spec, train_rows, val_rows, epochs=epochs, input_hw=hw,
                                              seed=args.seed, budget_s=budget_min * 60 if budget_min else None,
                                              mixed_precision=mixed, init_weights=init,
                                              work=Path(args.work) / mid if args.work else None, log=log)
        # The command that reproduces this file: the epochs actually run, without a time budget.
        command = _command([mid], args.quick, "models" if not args.quick else str(out_dir),
                           (f" --seed {args.seed}" if args.seed != SEED else "")
                           + (f" --manifest {args.manifest}" if args.manifest else "")
                           + ("" if args.quick else f" --epochs {ran}"))
        entry = export_one(spec, model, out_dir, val_rows=val_rows, val_patients=val_p, train_patients=train_p,
                           input_hw=hw, epochs=ran, seed=args.seed, wall_s=wall, command=command,
                           data_desc=data_desc, history=history, budget_min=budget_min,
                           mixed_precision=mixed, pretrain=pretrain, log=log)
        log(f"[{mid}] wrote {out_dir / entry['file']} ({entry['size_bytes'] / 2**20:.2f} MiB, "
            f"{entry['params']:,} parameters), training {wall:.0f} s, {ran} epochs")
        del model
    write_cards(out_dir, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
