"""Train, evaluate and ship the knee KL grader and its phenotype catalogue.

    python -m training.knee [--quick] [--out DIR] [--size 160] [--budget-min 55 | --epochs N] [--seed 0]
                            [--stage all|train|ship] [--work DIR] [--init CKPT] [--lr LR]
    python -m training.knee --stage ship --members WORK1 WORK2 [--out DIR]     (an ensemble, see below)

Model (file models/<id>.keras, id knee-kl-grader, version 1.0.0): `training.knee_model.knee_grader`,
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

Stages: `train` writes a checkpoint to the work folder (/tmp/jointscan_knee_work); `ship` reloads it,
saves the compact file into --out, evaluates the SHIPPED file on val, builds the phenotype catalogue
(training.knee_phenotypes) from the train-split embeddings, registers the model and writes its card.
`ship --members W1 W2 ...` ships the graders trained (`--stage train --work Wi`, each with its own seed)
as one ensemble file (training.knee_ensemble): outputs averaged, embeddings side by side. The committed
model is such an ensemble, because one grader's embedding, and so its phenotype clusters, depends on
its training seed.

`--quick` trains a tiny model for one short epoch on a handful of images (knee phantoms when the real
data folder is absent) into a temporary or given --out; it refuses to write into the committed models/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tasks.knee import DECISION_HEADS, GRADE_NAMES, N_GRADES, decide  # noqa: E402
from tasks.metrics import accuracy, confusion_matrix, kappa_figure, mae, per_class_recall

TASK = "knee"
MODEL_ID = "knee-kl-grader"
VERSION = "1.0.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_MODELS_DIR = REPO_ROOT / "models"
WORK_DIR = Path(os.environ.get("JOINTSCAN_KNEE_WORK", "/tmp/jointscan_knee_work"))
LOSS_WEIGHTS = {"kl_value": 1.0, "kl_coral": 4.0, "mirrored": 0.1}   # coral: BCE mean x 4 = CORAL's sum


@dataclass(frozen=True)
class Config:
    size: int = 160
    widths: tuple[int, ...] = (24, 48, 96, 112)
    blocks: tuple[int, ...] = (1, 1, 2, 1)
    embedding_dim: int = 64
    dropout: float = 0.2
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.03
    epochs: int | None = None          # step-based cosine over this many epochs ...
    budget_min: float | None = 55.0    # ... or time-based cosine over this wall-clock budget
    eval_every: int = 2
    seed: int = 0
    n_train: int | None = None         # None: the whole split
    n_val: int | None = None
    contrastive: float = 0.0           # weight of the auxiliary NT-Xent loss on two views (0: off)
    init: str | None = None            # fine-tune: start from this checkpoint's weights (any input size)


QUICK = Config(size=64, widths=(8, 16, 16, 24), blocks=(1, 1, 1, 1), embedding_dim=16, batch_size=8,
               epochs=1, budget_min=None, eval_every=1, n_train=40, n_val=20)


def set_threads(n: int | None = None) -> None:
    import tensorflow as tf

    n = n or int(os.environ.get("JOINTSCAN_TRAIN_THREADS", "2"))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (e.g. inside a notebook that ran TF before)
        pass


# -- augmentation -------------------------------------------------------------------------
def augment(img01: np.ndarray, rng: np.random.Generator, mirror: bool | None = None) -> tuple[np.ndarray, float]:
    """Light augmentation of one canonical image in [0, 1]; returns (image, mirrored 0/1).

    mirror None: a mirror flip with probability 0.5; True / False: forced (the second contrastive view)."""
    s = img01.shape[0]
    ang = rng.uniform(-8, 8)
    scale = rng.uniform(0.92, 1.08)
    tx, ty = rng.uniform(-0.05, 0.05, 2) * s
    m = cv2.getRotationMatrix2D((s / 2, s / 2), ang, scale)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(img01, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    gamma = math.exp(rng.uniform(-0.15, 0.15))
    out = np.clip(out, 0, 1) ** gamma
    out = (out - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.06, 0.06)
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.02), out.shape).astype(np.float32)
    mirrored = float(rng.random() < 0.5) if mirror is None else float(mirror)
    if mirrored:
        out = out[:, ::-1]
    return np.clip(out, 0, 1).astype(np.float32), mirrored


def targets(grades: np.ndarray, mirrored: np.ndarray) -> dict[str, np.ndarray]:
    g = np.asarray(grades, np.int64)
    coral = (g[:, None] > np.arange(N_GRADES - 1)[None, :]).astype(np.float32)
    return {"kl_value": g.astype(np.float32)[:, None], "kl_coral": coral,
            "mirrored": np.asarray(mirrored, np.float32)[:, None]}


def _py_dataset_base():
    import keras

    return keras.utils.PyDataset


class Batches(_py_dataset_base()):  # type: ignore[misc]
    """Augmented training batches from uint8 canonical images, reshuffled every epoch."""

    def __init__(self, images: np.ndarray, grades: np.ndarray, batch_size: int, seed: int, views: int = 1):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.grades, self.batch_size, self.seed = images, grades, batch_size, seed
        self.views = views
        self.epoch = 0
        self.order = np.random.default_rng([seed, 0]).permutation(len(grades))

    def __len__(self) -> int:
        return int(math.ceil(len(self.grades) / self.batch_size))

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        xs, ms = zip(*(augment(self.images[j].astype(np.float32) / 255.0, rng) for j in idx))
        if self.views == 1:
            return np.stack(xs)[..., None], targets(self.grades[idx], np.array(ms))
        # a second view of each knee: its own augmentation, the SAME mirror flag (orientation is content)
        x2 = [augment(self.images[j].astype(np.float32) / 255.0, rng, mirror=bool(m))[0] for j, m in zip(idx, ms)]
        y = targets(self.grades[idx], np.array(ms))
        y["contrast"] = np.zeros((len(idx), 1), np.float32)
        return (np.stack(xs)[..., None], np.ascontiguousarray(np.stack(x2))[..., None]), y

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.grades))


# -- model ---------------------------------------------------------------------------------
def build(cfg: Config):
    from training.knee_model import knee_grader

    return knee_grader(cfg.size, cfg.widths, cfg.blocks, cfg.embedding_dim, cfg.dropout)


def compile_model(model, cfg: Config):
    import keras

    opt = keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)
    model.compile(optimizer=opt,
                  loss={"kl_value": "mse", "kl_coral": "binary_crossentropy", "mirrored": "binary_crossentropy"},
                  loss_weights=LOSS_WEIGHTS)
    return model


def _cosine(frac: float, base: float, warmup: float) -> float:
    if frac < warmup:
        return base * max(frac / warmup, 0.02)
    t = min(1.0, (frac - warmup) / max(1e-9, 1.0 - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _schedule_callback(cfg: Config, steps_per_epoch: int, log: Callable[[str], None]):
    import keras

    class Schedule(keras.callbacks.Callback):
        """Warm-up + cosine on the fraction of the run done: steps (--epochs) or wall clock (--budget-min)."""

        def on_train_begin(self, logs=None):
            self.t0, self.step = time.perf_counter(), 0

        def frac(self) -> float:
            if cfg.epochs:
                return self.step / max(1, cfg.epochs * steps_per_epoch)
            return (time.perf_counter() - self.t0) / (60.0 * cfg.budget_min)

        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate.assign(_cosine(self.frac(), cfg.lr, cfg.warmup_frac))

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if cfg.budget_min and self.frac() >= 1.0:
                self.model.stop_training = True

    return Schedule()


# -- evaluation (the task's own decoding, test-time flip) ---------------------------------
def predict_tta(model_or_call, images_u8: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Canonical uint8 images -> outputs averaged over the image and its mirror (embedding: canonical only).

    `mirror_prob`: mean P(mirrored) of the canonical reading and 1 - P(mirrored) of the mirror, i.e. how
    sure the model is that the canonical copy is not mirrored (side detection accuracy uses it).
    """
    call = model_or_call if not hasattr(model_or_call, "predict_on_batch") else (
        lambda x: {k: np.asarray(v) for k, v in model_or_call(x, training=False).items()})
    outs: dict[str, list] = {"kl_value": [], "kl_coral": [], "embedding": [], "canon_ok": []}
    for i in range(0, len(images_u8), batch):
        x = images_u8[i:i + batch].astype(np.float32)[..., None] / 255.0
        n = len(x)
        o = call(np.concatenate([x, x[:, :, ::-1]], axis=0))
        v, c, m = np.asarray(o["kl_value"]).reshape(-1), np.asarray(o["kl_coral"]), np.asarray(o["mirrored"]).reshape(-1)
        outs["kl_value"].append((v[:n] + v[n:]) / 2)
        outs["kl_coral"].append((c[:n] + c[n:]) / 2)
        outs["embedding"].append(np.asarray(o["embedding"])[:n])
        outs["canon_ok"].append(((1 - m[:n]) + m[n:]) / 2)
    return {k: np.concatenate(v) for k, v in outs.items()}


def figures(grades: np.ndarray, pred: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Published figures per decision head: accuracy, QWK, MAE, per-grade recall, confusion matrix."""
    out = {}
    for head in DECISION_HEADS:
        g, cont = decide(pred["kl_value"], pred["kl_coral"], head)
        out[head] = {
            "accuracy": round(accuracy(g, grades), 4),
            "qwk": round(kappa_figure(grades, g, N_GRADES), 4),
            "mae": round(mae(g, grades), 4),
            "mae_continuous": round(mae(np.clip(cont, 0, 4), grades), 4),
            "recall": {n: (None if not np.isfinite(r) else round(float(r), 4))
                       for n, r in zip(GRADE_NAMES, per_class_recall(grades, g, N_GRADES))},
            "confusion_matrix": confusion_matrix(grades, g, N_GRADES).tolist(),
            "n": int(len(grades)),
        }
    return out


def best_head(figs: dict[str, dict[str, Any]]) -> str:
    """The decision head kept: highest QWK, then accuracy, then lowest MAE (chosen on val)."""
    return max(DECISION_HEADS, key=lambda h: (figs[h]["qwk"], figs[h]["accuracy"], -figs[h]["mae"]))


# -- data ---------------------------------------------------------------------------------
def load_data(cfg: Config, quick: bool, log: Callable[[str], None]):
    from training import knee_data

    if knee_data.available():
        t = time.perf_counter()
        sets = []
        for split, n, seed in (("train", cfg.n_train, cfg.seed), ("val", cfg.n_val, cfg.seed + 1)):
            rows = knee_data.list_split(split)
            if n:   # a stratified subset, chosen before any image is decoded
                rows = [rows[i] for i in _stratified(np.array([g for _, g, _ in rows]), n, seed)]
            sets.append(knee_data.load_split(split, cfg.size, rows=rows, cache=not n))
        train, val = sets
        source = "real OAI radiographs (knee_kl)"
        log(f"data: {len(train)} train / {len(val)} val real knees at {cfg.size} px ({time.perf_counter() - t:.0f} s)")
    elif quick:
        train, val = _phantom_sets(cfg, log)
        source = "knee phantoms (real data folder absent; quick mode only)"
    else:
        raise SystemExit(f"the real knee data is not at {knee_data.knee_dir()} (set JOINTSCAN_DATA_DIR)")
    return train, val, source


def _stratified(grades: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(grades == g)) for g in range(N_GRADES)]
    idx, k = [], 0
    while len(idx) < min(n, len(grades)):
        p = per[k % N_GRADES]
        if len(p) > k // N_GRADES:
            idx.append(p[k // N_GRADES])
        k += 1
    return np.sort(np.array(idx))


def _phantom_sets(cfg: Config, log):
    from tasks.knee import canonical, grader_input
    from training import knee_data
    from training.phantoms.knee import SEED_RANGES, generate_knee

    sets = []
    for split, n in (("train", cfg.n_train or 40), ("val", cfg.n_val or 20)):
        seeds = list(SEED_RANGES[split])[:n]
        cases = [generate_knee(s) for s in seeds]
        imgs = np.stack([np.rint(canonical(grader_input(c.image / 255.0, cfg.size), c.side) * 255).astype(np.uint8)
                         for c in cases])
        sets.append(knee_data.KneeSet(split, imgs, np.array([c.grade for c in cases]),
                                      np.array([c.side for c in cases]), np.array([f"phantom{s}" for s in seeds]),
                                      [f"phantom:{s}" for s in seeds]))
    log(f"data: {len(sets[0])} train / {len(sets[1])} val knee phantoms at {cfg.size} px")
    return sets


# -- training -----------------------------------------------------------------------------
def train(cfg: Config, train_set, val_set, log: Callable[[str], None] = print, ckpt: Path | None = None):
    """Fit; evaluates val (TTA, regression/coral/mean) every `eval_every` epochs and keeps the best by QWK."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    model = build(cfg)
    if cfg.init:
        model.set_weights(keras.models.load_model(cfg.init, compile=False).get_weights())
        log(f"initialised from {cfg.init}")
    if cfg.contrastive:
        from training.knee_model import contrastive_trainer, nt_xent

        trainer = contrastive_trainer(model)
        trainer.compile(optimizer=keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay),
                        loss={"kl_value": "mse", "kl_coral": "binary_crossentropy",
                              "mirrored": "binary_crossentropy", "contrast": nt_xent},
                        loss_weights={**LOSS_WEIGHTS, "contrast": cfg.contrastive})
    else:
        trainer = compile_model(model, cfg)
    batches = Batches(train_set.images, train_set.grades, cfg.batch_size, cfg.seed,
                      views=2 if cfg.contrastive else 1)
    history: list[dict[str, Any]] = []
    best = {"qwk": -2.0, "epoch": 0, "weights": None, "head": None}

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            last = self.model.stop_training or (cfg.epochs and epoch + 1 >= cfg.epochs)
            if (epoch + 1) % cfg.eval_every and not last:
                history.append({"epoch": epoch + 1, "loss": round(float(logs.get("loss", np.nan)), 4)})
                return
            pred = predict_tta(model, val_set.images)
            figs = figures(val_set.grades, pred)
            head = best_head(figs)
            side_acc = float((pred["canon_ok"] > 0.5).mean())
            row = {"epoch": epoch + 1, "loss": round(float(logs.get("loss", np.nan)), 4),
                   "lr": float(self.model.optimizer.learning_rate.numpy()), "side_acc": round(side_acc, 4),
                   **{f"{h}_{k}": figs[h][k] for h in DECISION_HEADS for k in ("accuracy", "qwk", "mae")},
                   "elapsed_s": round(time.perf_counter() - t0, 1)}
            history.append(row)
            log(json.dumps(row))
            if figs[head]["qwk"] > best["qwk"]:
                best.update(qwk=figs[head]["qwk"], epoch=epoch + 1, weights=model.get_weights(), head=head)
                if ckpt is not None:
                    model.save(ckpt)

    steps = len(batches)
    epochs = cfg.epochs or 1000
    t0 = time.perf_counter()
    trainer.fit(batches, epochs=epochs, verbose=0,
              callbacks=[_schedule_callback(cfg, steps, log), Evaluate()])
    wall = time.perf_counter() - t0
    if best["weights"] is not None:
        model.set_weights(best["weights"])
    log(f"trained {len(history)} epochs in {wall:.0f} s; best val QWK {best['qwk']:.4f} at epoch {best['epoch']} "
        f"({best['head']} head)")
    return model, {"history": history, "best_epoch": best["epoch"], "wall_time_s": round(wall, 1),
                   "epochs_run": len(history)}


# -- command line ----------------------------------------------------------------------------
def _config_from_args(args) -> Config:
    from dataclasses import replace

    cfg = QUICK if args.quick else Config()
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


def _train_command(c: dict[str, Any], quick: bool) -> str:
    """The training command of one run from its recorded config (a Config's fields)."""
    return ("python -m training.knee " + ("--quick " if quick else "") + f"--size {c['size']} "
            + (f"--epochs {c['epochs']}" if c.get("epochs") else f"--budget-min {c['budget_min']:g}")
            + (f" --lr {c['lr']:g}" if c.get("lr", Config.lr) != Config.lr else "")
            + (f" --init {c['init']}" if c.get("init") else "") + f" --seed {c['seed']}")


def _stages(c: dict[str, Any], init_info: dict[str, Any] | None, quick: bool) -> list[str]:
    """A fine-tuned run is preceded by its first stage's command (training into the --init folder)."""
    if c.get("init") and init_info:
        return [_train_command(init_info["config"], quick) + f" --stage train --work {Path(c['init']).parent}"]
    return []


def command_line(args, cfg: Config, init_info: dict[str, Any] | None = None) -> str:
    """The command(s) that regenerate the shipped file of a single run."""
    c = cfg.__dict__
    return " && ".join(_stages(c, init_info, args.quick)
                       + [_train_command(c, args.quick) + f" --out {args.out or 'models'}"])


def ensemble_command_line(args, infos: list[dict[str, Any]], works: list[str]) -> str:
    """The commands that regenerate an ensemble: each member's training (both stages), then the ship."""
    cmds = []
    for info, work in zip(infos, works):
        cmds += _stages(info["config"], info.get("initialised_from"), args.quick)
        cmds.append(_train_command(info["config"], args.quick) + f" --stage train --work {work}")
    cmds.append("python -m training.knee " + ("--quick " if args.quick else "")
                + f"--stage ship --members {' '.join(works)} --out {args.out or 'models'}")
    return " && ".join(cmds)


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, one short epoch, temporary output")
    ap.add_argument("--out", default=None, help="models folder to write (default: models/, or a temp dir with --quick)")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="cosine over this many epochs")
    ap.add_argument("--budget-min", type=float, default=None, help="cosine over this wall-clock budget")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    ap.add_argument("--init", default=None,
                    help="fine-tune from this checkpoint (e.g. a lower-resolution run's; its weights fit any size)")
    ap.add_argument("--stage", choices=("all", "train", "ship"), default="all")
    ap.add_argument("--work", default=None, help=f"checkpoint folder (default {WORK_DIR})")
    ap.add_argument("--members", nargs="+", default=None, metavar="WORK",
                    help="with --stage ship: ship the graders trained in these work folders as one ensemble")
    args = ap.parse_args(argv)
    if args.members and args.stage != "ship":
        ap.error("--members goes with --stage ship (train each member with --stage train --work FOLDER first)")
    infos = [json.loads((Path(w) / "train_info.json").read_text()) for w in args.members or []]
    cfg = member_config(infos[0]) if infos else _config_from_args(args)
    set_threads()
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="knee_quick_")) if args.quick
                                          else COMMITTED_MODELS_DIR)
    if args.quick and out.resolve() == COMMITTED_MODELS_DIR.resolve():
        raise SystemExit("--quick refuses to write into the committed models/ folder; give another --out")
    work = Path(args.work) if args.work else (out / ".work" if args.quick else WORK_DIR)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{MODEL_ID}.ckpt.keras"
    log = _logger(work / "train.log")
    log(f"config: {cfg}")
    train_set, val_set, source = load_data(cfg, args.quick, log)
    if args.stage in ("all", "train"):
        init_info = init_info_of(cfg)       # read first: the first stage may share this work folder
        model, info = train(cfg, train_set, val_set, log, ckpt=ckpt)
        model.save(ckpt)
        (work / "train_info.json").write_text(json.dumps({"config": cfg.__dict__, "source": source,
                                                          "initialised_from": init_info, **info},
                                                         indent=1, default=list))
    if args.stage in ("all", "ship"):
        from training.knee_ship import ship

        if args.members:
            ckpts = [Path(w) / f"{MODEL_ID}.ckpt.keras" for w in args.members]
            command = ensemble_command_line(args, infos, args.members)
        else:
            infos = [json.loads((work / "train_info.json").read_text())]
            ckpts, command = [ckpt], command_line(args, cfg, infos[0].get("initialised_from"))
        ship(ckpts, cfg, train_set, val_set, out, infos, source, command, log, quick=args.quick)
    log(f"done; output in {out}")
    return 0


def _logger(path: Path) -> Callable[[str], None]:
    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with path.open("a") as fh:
            fh.write(line + "\n")

    return log


if __name__ == "__main__":
    sys.exit(main())
