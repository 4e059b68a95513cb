"""Mutation check (not part of CI): flip comparisons, constants and boolean operators in chosen
functions of the serving code, run the fast tests that cover them, and report each mutant as
killed (some test failed) or survived (every test still passed: a behaviour no test pins down).

    .venv/bin/python benchmarks/mutation_check.py [--limit N] [--timeout S] [--list]

Each mutant changes one node of one function (found with `ast`, so comments and strings are never
touched); mutants are written into a temporary copy of the tracked files (the checkout is never changed, so
the check can run beside other work), one at a time. A bounded number of
mutants (--limit, spread evenly over the candidates) keeps a run to a few minutes on two cores.
mutmut does the same at scale, but it runs the whole suite through its own runner (hours here);
this loop chooses the mutants and the tests each one runs, so one run stays short.
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# file -> (functions to mutate, the fast test files that exercise them)
TARGETS = {
    "imaging/sniff.py": (["sniff_type", "_looks_like_bare_dicom", "png_size", "jpeg_size", "check_pixels",
                          "check_min_size", "check_png_chunks"], ["tests/test_imaging_io.py"]),
    "imaging/raster.py": (["read_raster"], ["tests/test_imaging_io.py"]),
    "imaging/overlay.py": (["heatmap_overlay", "grey_to_rgb"], ["tests/test_imaging_overlay.py"]),
    "model_loader.py": (["problem", "load", "_load_verified"],
                        ["tests/test_model_loader.py", "tests/test_unloadable_model.py"]),
    "predict.py": (["clean_options", "choose_models", "analyze", "execute_run", "sweep_runs", "_failure_reason"],
                   ["tests/test_scans.py", "tests/test_reliability.py", "tests/test_jobs.py"]),
}
SWAP_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
SWAP_BOOL = {ast.And: ast.Or, ast.Or: ast.And}
SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.Div: ast.Mult}


@dataclass
class Mutant:
    file: str
    function: str
    line: int
    description: str
    source: str          # the whole mutated module


def _functions(tree: ast.Module, names: list[str]):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            yield node


def _mutations(fn: ast.AST):
    """(node, apply, undo, description) for every single-node change in the function's body."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                new = SWAP_COMPARE.get(type(op))
                if new:
                    yield node, (lambda n=node, i=i, new=new: n.ops.__setitem__(i, new())), \
                        (lambda n=node, i=i, op=op: n.ops.__setitem__(i, op)), f"{type(op).__name__} -> {new.__name__}"
        elif isinstance(node, ast.BoolOp) and type(node.op) in SWAP_BOOL:
            op, new = node.op, SWAP_BOOL[type(node.op)]
            yield node, (lambda n=node, new=new: setattr(n, "op", new())), (lambda n=node, op=op: setattr(n, "op", op)), \
                f"{type(op).__name__} -> {new.__name__}"
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
            op, new = node.op, SWAP_BINOP[type(node.op)]
            yield node, (lambda n=node, new=new: setattr(n, "op", new())), (lambda n=node, op=op: setattr(n, "op", op)), \
                f"{type(op).__name__} -> {new.__name__}"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
            old = node.value
            new_value = old + 1 if isinstance(old, int) else (old * 2 if old else 1.0)
            yield node, (lambda n=node, v=new_value: setattr(n, "value", v)), (lambda n=node, v=old: setattr(n, "value", v)), \
                f"constant {old!r} -> {new_value!r}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            old = node.value
            yield node, (lambda n=node, v=not old: setattr(n, "value", v)), (lambda n=node, v=old: setattr(n, "value", v)), \
                f"{old!r} -> {not old!r}"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, None, None, "drop `not`"


class _DropNot(ast.NodeTransformer):
    def __init__(self, target):
        self.target = target

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return node.operand if node is self.target else node


def mutants() -> list[Mutant]:
    out = []
    for rel, (names, _tests) in TARGETS.items():
        text = (REPO / rel).read_text()
        tree = ast.parse(text)
        for fn in _functions(tree, names):
            for node, apply, undo, description in list(_mutations(fn)):
                if apply is None:
                    # a fresh tree has the same shape: find the matching node by position
                    mutated = ast.parse(text)
                    target = next(n for n in ast.walk(mutated) if isinstance(n, ast.UnaryOp)
                                  and (n.lineno, n.col_offset) == (node.lineno, node.col_offset))
                    source = ast.unparse(_DropNot(target).visit(mutated))
                else:
                    apply()
                    source = ast.unparse(tree)
                    undo()
                out.append(Mutant(rel, fn.name, node.lineno, description, source))
    return out


def copy_of_repo() -> Path:
    """The tracked files in a temporary folder: mutants are written there, never into the checkout."""
    root = Path(tempfile.mkdtemp(prefix="jointscan_mutants_")) / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src, dst = REPO / name.decode(), root / name.decode()
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return root


def run_one(m: Mutant, root: Path, timeout: float) -> tuple[str, float]:
    path = root / m.file
    original = path.read_text()
    t0 = time.perf_counter()
    try:
        path.write_text(m.source)
        tests = TARGETS[m.file][1]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "JOINTSCAN_DATA_DIR": os.environ.get("JOINTSCAN_DATA_DIR", str(REPO.parent / "shared" / "data"))}
        missing = [t for t in tests if not (root / t).is_file()]
        if missing:
            raise SystemExit(f"test files not in the copy (commit them first): {missing}")
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=root, env=env, capture_output=True, timeout=timeout)
            # 1: a test failed; 0: all passed; anything else (collection error, ...) is not a verdict
            outcome = {0: "survived", 1: "killed"}.get(proc.returncode, f"error (pytest exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            outcome = "killed (timeout)"
    finally:                                               # the next mutant starts from the original
        path.write_text(original)
    return outcome, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=30, help="mutants to run, spread over the candidates (0: all)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant's test run")
    ap.add_argument("--list", action="store_true", help="list the candidate mutants and stop")
    args = ap.parse_args(argv)
    candidates = mutants()
    if args.limit and len(candidates) > args.limit:
        step = len(candidates) / args.limit
        chosen = [candidates[int(i * step)] for i in range(args.limit)]
    else:
        chosen = candidates
    print(f"{len(candidates)} candidate mutants; running {len(chosen)}")
    if args.list:
        for m in chosen:
            print(f"  {m.file}:{m.line} {m.function}: {m.description}")
        return 0
    root = copy_of_repo()
    survived = []
    for i, m in enumerate(chosen, 1):
        outcome, seconds = run_one(m, root, args.timeout)
        print(f"[{i}/{len(chosen)}] {outcome:<16} {m.file}:{m.line} {m.function}: {m.description} ({seconds:.0f} s)",
              flush=True)
        if outcome == "survived":
            survived.append(m)
    killed = len(chosen) - len(survived)
    print(f"\n{len(chosen)} mutants: {killed} killed, {len(survived)} survived")
    for m in survived:
        print(f"  survived: {m.file}:{m.line} {m.function}: {m.description}")
    shutil.rmtree(root.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
