"""Train, evaluate and export the knee KL grader and its phenotype catalogue.

    python -m training.knee [--quick] [--out DIR] [--size 160] [--budget-min 55 | --epochs N] [--seed 0]
                            [--stage all|train|export] [--work DIR] [--init CKPT] [--lr LR]
    python -m training.knee --stage export --members WORK1 WORK2 [--out DIR]

A stopped training run continues from its last finished epoch when the same command is started again with the
same --work (training.knee.train: the weights, optimiser and epoch kept beside the checkpoint, the history and
the wall time of every sitting in train_state.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.knee.config import MODEL_ID, QUICK_CONFIG, WORK_DIR, Config
from training.knee.data import load_data
from training.knee.export import command_line, ensemble_command_line, export_grader
from training.knee.train import set_threads, train
from training.toolbox.runs import COMMITTED_MODELS_DIR, file_logger, is_committed_models_dir


def _config_from_args(args) -> Config:
    cfg = QUICK_CONFIG if args.quick else Config()
    over = {}
    if args.size:
        over["size"] = args.size
    if args.epochs:
        over["epochs"], over["budget_min"] = args.epochs, None
    if args.budget_min:
        over["budget_min"], over["epochs"] = args.budget_min, None
    if args.seed is not None:
        over["seed"] = args.seed
    if args.lr:
        over["lr"] = args.lr
    if args.init:
        over["init"] = args.init
    return replace(cfg, **over)


def member_config(info: dict[str, Any]) -> Config:
    """The Config a member was trained with, from its train_info.json (lists back to tuples)."""
    known = Config.__dataclass_fields__
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items() if k in known})


def init_info_of(cfg: Config) -> dict[str, Any] | None:
    """The first stage's training record (train_info.json beside the --init checkpoint), if any."""
    if not cfg.init:
        return None
    f = Path(cfg.init).parent / "train_info.json"
    if not f.exists():
        return None
    info = json.loads(f.read_text())
    return {k: info.get(k) for k in ("config", "epochs_run", "best_epoch", "wall_time_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.knee", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, one short epoch, temporary output")
    ap.add_argument("--out", default=None, help="models folder to write (default: models/, or a temp dir with --quick)")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="cosine over this many epochs")
    ap.add_argument("--budget-min", type=float, default=None, help="cosine over this wall-clock budget")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    ap.add_argument("--init", default=None,
                    help="fine-tune from this checkpoint (e.g. a lower-resolution run's; its weights fit any size)")
    ap.add_argument("--stage", choices=("all", "train", "export"), default="all")
    ap.add_argument("--work", default=None, help=f"checkpoint folder (default {WORK_DIR})")
    ap.add_argument("--members", nargs="+", default=None, metavar="WORK",
                    help="with --stage export: export the graders trained in these work folders as one ensemble")
    args = ap.parse_args(argv)
    if args.members and args.stage != "export":
        ap.error("--members goes with --stage export (train each member with --stage train --work FOLDER first)")
    infos = [json.loads((Path(w) / "train_info.json").read_text()) for w in args.members or []]
    cfg = member_config(infos[0]) if infos else _config_from_args(args)
    set_threads()
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="knee_quick_")) if args.quick
                                          else COMMITTED_MODELS_DIR)
    if args.quick and is_committed_models_dir(out):
        raise SystemExit("--quick refuses to write into the committed models/ folder; give another --out")
    work = Path(args.work) if args.work else (out / ".work" if args.quick else WORK_DIR)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{MODEL_ID}.ckpt.keras"
    log = file_logger(work / "train.log")
    log(f"config: {cfg}")
    train_set, val_set, source = load_data(cfg, args.quick, log)
    if args.stage in ("all", "train"):
        init_info = init_info_of(cfg)       # read first: the first stage may share this work folder
        model, info = train(cfg, train_set, val_set, log, ckpt=ckpt)
        model.save(ckpt)
        (work / "train_info.json").write_text(json.dumps({"config": cfg.__dict__, "source": source,
                                                          "initialised_from": init_info, **info},
                                                         indent=1, default=list))
    if args.stage in ("all", "export"):
        if args.members:
            ckpts = [Path(w) / f"{MODEL_ID}.ckpt.keras" for w in args.members]
            command = ensemble_command_line(args, infos, args.members)
        else:
            infos = [json.loads((work / "train_info.json").read_text())]
            ckpts, command = [ckpt], command_line(args, cfg, infos[0].get("initialised_from"))
        export_grader(ckpts, cfg, train_set, val_set, out, infos, source, command, log, quick=args.quick)
    log(f"done; output in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
