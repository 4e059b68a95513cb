"""Trust on the wrong input: every task fed every other task's images, false refusals in domain, calibration, cost.

    python benchmarks/trust_figures.py [--per-kind 8] [--in-domain 60]

1. Wrong-anatomy probes. Each task is sent, through `POST /api/v1/analyze` of an app on a temporary
   instance with the committed models, images of every other kind: real knee and hand radiographs, spine
   and SIJ MRI slices, the other DICOM files of ../shared/data (chest, tibia, ankle CT, MR), phantoms of
   the other tasks, generated documents and noise. Each answer is counted as *refused* (422 from the
   recogniser, or the task's own input check), *withheld* (stored, but every grade, score, stage or mask
   withheld by the models' training-data checks) or *answered*: a confident answer on the wrong anatomy,
   which must never happen (the figure to read is the total of that column: 0). Each probe is then sent
   again with "analyse anyway": the recogniser is overridden, and the models' own checks must withhold.
2. In-domain false refusals: each task's own validation images (knee val, spine validation patients,
   the real SIJ studies, the SIJ and hand validation phantoms), refused by the recogniser or withheld by a
   model's check. The sacroiliac models were trained on phantoms only: on real SIJ MRI they withhold by
   design (they have not been validated there); the recogniser's share is the figure for real studies.
3. Calibration: each calibrated head's expected calibration error before and after, from the registry.
4. Cost: the recogniser, and what each model's training-data check adds to that model's own call (the
   check reads its layer from the same compiled call), per upload, warm, 2 CPU threads.
Exits 0; parts without their data print SKIP.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from imaging.overlay import encode_png  # noqa: E402
from imaging.volume import read_nifti  # noqa: E402
from tasks import all_tasks  # noqa: E402
from imaging.normalize import normalise_volume  # noqa: E402
from training.toolbox.runs import data_dir  # noqa: E402


def png(image01: np.ndarray) -> bytes:
    return encode_png(np.rint(np.clip(image01, 0, 1) * 255).astype(np.uint8))


def probe_files(per_kind: int) -> dict[str, list[bytes]]:
    """Upload bytes by kind: real files as they are, NIfTI slices exported as PNG, phantoms, made-up images."""
    from training.phantoms.hand import generate_hand, split_patients
    from training.phantoms.knee import SEED_RANGES as KNEE, generate_knee
    from training.phantoms.sacroiliac import SEED_RANGES as SIJ, generate_case
    from training.recogniser.data import document, texture

    root = data_dir()
    files: dict[str, list[bytes]] = defaultdict(list)

    def spread(paths: list[str], n: int) -> list[str]:
        return paths[:: max(1, len(paths) // n)][:n] if paths else []

    for kind, pattern in (("knee_radiograph", "knee_kl/val/*/*.jpg"), ("hand_radiograph", "hand_xray_paediatric/*.png"),
                          ("spine_mri", "spine_mri/images/*.png"), ("sacroiliac_mri", "sij_mri_dicom/*/*.dcm"),
                          ("other_dicom", "dicom/*.dcm")):
        files[kind] += [Path(p).read_bytes() for p in spread(sorted(glob.glob(str(root / pattern))), per_kind)]
    volumes = sorted(glob.glob(str(root / "sij_mri_nifti/images/*/*.nii.gz")))
    for path in spread(volumes, per_kind):
        volume = normalise_volume(read_nifti(Path(path).read_bytes()).volumes[0].voxels)
        files["sacroiliac_mri"].append(png(volume[len(volume) // 2]))
    files["sacroiliac_phantom"] = [png(generate_case(s).image / 255) for s in list(SIJ["test"])[:per_kind]]
    files["knee_phantom"] = [png(generate_knee(s).image / 255) for s in list(KNEE["test"])[:per_kind]]
    files["hand_phantom"] = [png(generate_hand(p, 0).image / 255) for p in split_patients(range(200))["test"][:per_kind]]
    rng = np.random.default_rng(5)
    files["document"] = [png(document(rng)) for _ in range(per_kind)]
    files["noise"] = [png(texture(rng)) for _ in range(per_kind)]
    return {k: v for k, v in files.items() if v}


# Which probe kinds a task reads (its own kind is not a wrong-anatomy probe).
OWN = {"knee": {"knee_radiograph", "knee_phantom"}, "hand": {"hand_radiograph", "hand_phantom"},
       "spine": {"spine_mri"}, "sacroiliac": {"sacroiliac_mri", "sacroiliac_phantom"}}


def answered(body: dict) -> bool:
    """Whether a stored run gave a clinical answer: a model result not withheld (for the hand scorer: a
    joint with a GUSS score)."""
    for item in body["results"]:
        result = item["result"]
        if result.get("withheld"):
            continue
        if item["role"] == "scorer":
            if any(j.get("guss") is not None for j in result.get("joints", [])):
                return True
            continue
        if item["role"] == "detector":
            continue   # boxes only: the score is the answer, and the scorer's check decides it
        return True
    return False


class Client:
    def __init__(self, models_dir: Path):
        from app import create_app
        from database import ApiToken, User, db

        self.tmp = tempfile.TemporaryDirectory()
        os.environ["JOINTSCAN_INSTANCE_PATH"] = self.tmp.name
        # A benchmark sends hundreds of analyses a minute from one user: the per-user and per-address limits
        # (tested on their own) are lifted here.
        self.app = create_app({"TESTING": True, "SECRET_KEY": "bench", "WTF_CSRF_ENABLED": False,
                               "ANALYSIS_LIMITS_PER_USER": "1000000 per minute",
                               "ANALYSIS_LIMITS_PER_ADDRESS": "1000000 per minute", "MIN_FREE_DISK_BYTES": 0,
                               "SQLALCHEMY_DATABASE_URI": f"sqlite:///{self.tmp.name}/bench.sqlite",
                               "MODELS_DIR": str(models_dir), "RESULTS_DIR": f"{self.tmp.name}/results"})
        with self.app.app_context():
            db.create_all()
            user = User(username="bench", role="clinician")
            user.set_password("a long benchmark password")
            db.session.add(user)
            db.session.commit()
            row, self.token = ApiToken.issue(user, "bench")
            db.session.add(row)
            db.session.commit()
        self.client = self.app.test_client()

    def analyse(self, task: str, data: bytes, anyway: bool = False) -> tuple[int, dict]:
        fields = {"task": task, "file": (io.BytesIO(data), "probe"), "include_heatmaps": "false"}
        if anyway:
            fields["analyse_anyway"] = "true"
        response = self.client.post("/api/v1/analyze?wait=true", data=fields,
                                    headers={"Authorization": f"Bearer {self.token}"},
                                    content_type="multipart/form-data")
        return response.status_code, response.get_json()


def outcome(status: int, body: dict) -> str:
    if status == 201:
        return "answered" if answered(body) else "withheld"
    if status == 422 and body["error"].get("recognised"):
        return "refused (recogniser)"
    if 400 <= status < 500:
        return "refused (input check)"
    return f"error {status}"


def probes(client: Client, files: dict[str, list[bytes]]) -> None:
    print("\n## 1. Wrong-anatomy probes (each task fed every other kind)\n")
    print("Then the same probes with 'analyse anyway' (the recogniser overridden): the models' own checks must "
          "withhold every answer.\n")
    columns = ["refused (recogniser)", "refused (input check)", "withheld", "answered"]
    print("| task | probe | n | " + " | ".join(columns) + " | anyway: withheld | anyway: answered |\n|---|---|---|"
          + "---|" * (len(columns) + 2))
    totals, anyway_totals = Counter(), Counter()
    for task in all_tasks():
        for kind, datas in files.items():
            if kind in OWN[task]:
                continue
            counts = Counter(outcome(*client.analyse(task, data)) for data in datas)
            anyway = Counter(outcome(*client.analyse(task, data, anyway=True)) for data in datas)
            totals.update(counts)
            anyway_totals.update(anyway)
            print(f"| {task} | {kind} | {len(datas)} | " + " | ".join(str(counts.get(c, 0)) for c in columns)
                  + f" | {anyway.get('withheld', 0)} | {anyway.get('answered', 0)} |"
                  + (f" {dict((k, v) for k, v in counts.items() if k not in columns)}" if set(counts) - set(columns) else ""))
    print(f"\nTotal: {sum(totals.values())} probes; " + ", ".join(f"{c} {totals.get(c, 0)}" for c in columns)
          + (f"; other {dict((k, v) for k, v in totals.items() if k not in columns)}" if set(totals) - set(columns) else ""))
    print("Analysed anyway: " + ", ".join(f"{c} {anyway_totals.get(c, 0)}" for c in columns))


def in_domain(client: Client, n: int) -> None:
    from training.phantoms.hand import generate_hand, split_patients
    from training.phantoms.sacroiliac import SEED_RANGES as SIJ, generate_case
    from training.spine.data import patient_of, patient_split

    print("\n## 2. In-domain inputs: false refusals\n")
    root = data_dir()
    sets: dict[tuple[str, str], list[bytes]] = {}
    knees = sorted(glob.glob(str(root / "knee_kl/val/*/*.jpg")))
    if knees:
        sets[("knee", "knee val radiographs")] = [Path(p).read_bytes() for p in knees[:: max(1, len(knees) // n)][:n]]
    spine = sorted(glob.glob(str(root / "spine_mri/images/*.png")))
    if spine:
        _, val = patient_split([patient_of(Path(p).name) for p in spine])
        chosen = [p for p in spine if patient_of(Path(p).name) in val]
        sets[("spine", "spine validation patients")] = [Path(p).read_bytes() for p in chosen[:: max(1, len(chosen) // n)][:n]]
    slices = []
    # The studies' images (not their masks), every slice, and every slice of the DICOM study.
    for folder in ("images", "unlabelled"):
        for path in sorted(glob.glob(str(root / "sij_mri_nifti" / folder / "*" / "*.nii.gz"))):
            volume = normalise_volume(read_nifti(Path(path).read_bytes()).volumes[0].voxels)
            slices += [png(s) for s in volume]
    slices += [Path(p).read_bytes() for p in sorted(glob.glob(str(root / "sij_mri_dicom/*/*.dcm")))]
    if slices:
        sets[("sacroiliac", "real SIJ study slices")] = slices
    sets[("sacroiliac", "SIJ validation phantoms")] = [png(generate_case(s).image / 255) for s in list(SIJ["val"])[:n]]
    sets[("hand", "hand validation phantoms")] = [png(generate_hand(p, 0).image / 255)
                                                  for p in split_patients(range(400))["val"][:n]]
    print("| task | inputs | n | refused by the recogniser | withheld by a model's check | answered |\n|---|---|---|---|---|---|")
    for (task, label), datas in sets.items():
        counts = Counter(outcome(*client.analyse(task, data)) for data in datas)
        refused = counts.get("refused (recogniser)", 0) + counts.get("refused (input check)", 0)
        n_all = len(datas)
        print(f"| {task} | {label} | {n_all} | {refused} ({100 * refused / n_all:.1f}%) | "
              f"{counts.get('withheld', 0)} ({100 * counts.get('withheld', 0) / n_all:.1f}%) | {counts.get('answered', 0)} |")


def calibration(models_dir: Path) -> None:
    print("\n## 3. Calibration (expected calibration error, from the registry)\n")
    registry = json.loads((models_dir / "registry.json").read_text())
    rows = [(m["id"], head, spec) for m in registry["models"] for head, spec in (m.get("calibration") or {}).items()]
    if not rows:
        print("SKIP: no model carries a calibration block")
        return
    print("| model | head | T | ECE before | ECE after | n | fitted on |\n|---|---|---|---|---|---|---|")
    for model_id, head, spec in rows:
        print(f"| {model_id} | {head} | {spec.get('temperature', float('nan')):.3f} | {spec.get('ece_before', float('nan')):.4f} | "
              f"{spec.get('ece_after', float('nan')):.4f} | {spec.get('n')} | {spec.get('fitted_on', '')} |")


def cost(models_dir: Path, files: dict[str, list[bytes]], repeats: int = 30) -> None:
    from imaging.io import read_image
    from model_loader import ModelRegistry
    from tasks.ood import run_checked
    from tasks.recognition import recognise

    print("\n## 4. Cost of the checks per upload (warm, median of %d)\n" % repeats)
    registry = ModelRegistry(models_dir)
    rec = registry.load("image-recogniser")
    image = read_image(files["knee_radiograph"][0] if "knee_radiograph" in files else files["knee_phantom"][0])
    recognise(rec, image.pixels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        recognise(rec, image.pixels)
        times.append((time.perf_counter() - t0) * 1000)
    recogniser_ms = float(np.median(times))
    print(f"- recogniser: {recogniser_ms:.2f} ms")
    added: dict[str, list[float]] = defaultdict(list)
    for entry in registry.entries():
        if not entry.ood or registry.problem(entry.id):
            continue
        model = registry.load(entry.id)
        x = np.random.default_rng(0).random((1, *entry.input_shape)).astype(np.float32)
        run_checked(model, x), model(x)
        plain, checked = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            run_checked(model, x)
            plain.append((t1 - t0) * 1000)
            checked.append((time.perf_counter() - t1) * 1000)
        extra = max(0.0, float(np.median(checked) - np.median(plain)))
        added[entry.task].append(extra)
        print(f"- {entry.id} training-data check ({entry.ood['layer']}): model alone {np.median(plain):.2f} ms, "
              f"with its check {np.median(checked):.2f} ms: +{extra:.2f} ms")
    print("\nAdded per upload, every model of the task chosen: "
          + "; ".join(f"{task} {recogniser_ms + sum(ms):.2f} ms" for task, ms in sorted(added.items()))
          + f" (the recogniser {recogniser_ms:.2f} ms and each model's check)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--per-kind", type=int, default=8)
    parser.add_argument("--in-domain", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    t0 = time.time()
    files = probe_files(args.per_kind)
    print("probe kinds: " + ", ".join(f"{k} {len(v)}" for k, v in files.items()))
    client = Client(args.models)
    probes(client, files)
    in_domain(client, args.in_domain)
    calibration(args.models)
    cost(args.models, files)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
