"""A batch of knee radiographs through `flask batch`: wall time, files per second, and a second call that
does nothing.

    .venv/bin/python benchmarks/batch_figures.py [--files 1000] [--threads 2]

The files are copies of the real validation knees of ../shared/data/knee_kl (cycled to --files; knee
phantoms when the folder is absent), scored with the committed knee grader on a temporary instance, as
one clinician's runs, the way `flask batch FOLDER --task knee --user NAME` runs them.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from app import create_app
    from database import User, db
    from ops.batch import run_batch
    from storage import results_dir, upload_limits
    from model_loader import current_registry
    from training.toolbox.runs import data_dir

    work = Path(tempfile.mkdtemp(prefix="jointscan-batch-"))
    folder = work / "knees"
    folder.mkdir()
    sources = sorted(glob.glob(str(data_dir() / "knee_kl" / "val" / "*" / "*.jpg")))
    if not sources:
        import cv2

        from training.phantoms.knee import generate_knee

        for seed in range(50):
            path = work / f"phantom{seed}.png"
            cv2.imwrite(str(path), generate_knee(seed).image)
            sources.append(str(path))
        print(f"no real knees at {data_dir() / 'knee_kl'}: knee phantoms instead")
    for i in range(args.files):
        shutil.copy(sources[i % len(sources)], folder / f"knee{i:05d}{Path(sources[i % len(sources)]).suffix}")
    os.environ["JOINTSCAN_INSTANCE_PATH"] = str(work / "instance")
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{work / 'batch.sqlite'}", "MIN_FREE_DISK_BYTES": 0})
    with app.app_context():
        db.create_all()
        user = User(username="trial", role="clinician")
        user.set_password("a long batch passphrase 4")
        db.session.add(user)
        db.session.commit()
        out = work / "knees.csv"
        kwargs = dict(registry=current_registry(), results_dir=results_dir(), limits=upload_limits())
        first = run_batch(folder, "knee", user, out, **kwargs)
        t0 = time.perf_counter()
        second = run_batch(folder, "knee", user, out, **kwargs)
        second_s = time.perf_counter() - t0
        with out.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    graded = sum(1 for r in rows if r.get("kl_grade") not in (None, ""))
    print(f"{first.files} knee radiographs, {args.threads} threads: {first.seconds:.1f} s, {first.rate:.1f} files/s "
          f"({first.done} done, {first.refused} refused, {first.failed} failed; {graded} with a KL grade)")
    print(f"second call: {second.skipped} of {second.files} already in the CSV, {second.done} analysed, "
          f"{second_s:.2f} s; the CSV has {len(rows)} rows")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
