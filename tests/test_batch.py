"""`flask batch`: a folder of scans analysed as one user's uploads, one CSV row per file, resumable, bad
files reported and skipped, never stopping the batch."""
from __future__ import annotations

import csv

from database import AuditEvent, Run
from tests.conftest import SEG_OURS, CLS_OURS, create_user


def rows_of(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_batch_writes_a_row_per_file_skips_bad_ones_and_resumes(make_app, scan_png, scan_jpeg, tmp_path):
    app = make_app()
    create_user(app, "trial")
    folder = tmp_path / "scans"
    (folder / "visit2").mkdir(parents=True)
    (folder / "a.png").write_bytes(scan_png)
    (folder / "visit2" / "b.jpg").write_bytes(scan_jpeg)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("ignored: not a scan")
    out = tmp_path / "results.csv"
    runner = app.test_cli_runner()
    args = ["batch", str(folder), "--task", "sacroiliac", "--user", "trial", "--out", str(out),
            "--models", f"{SEG_OURS},{CLS_OURS}"]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    assert "3 files: 0 already" in result.output and "2 done, 1 refused" in result.output
    rows = {r["file"]: r for r in rows_of(out)}
    assert set(rows) == {"a.png", "visit2/b.jpg", "broken.png"}
    assert rows["broken.png"]["status"] == "refused" and rows["broken.png"]["message"]
    with app.app_context():
        for name in ("a.png", "visit2/b.jpg"):
            row = rows[name]
            run = Run.query.filter_by(public_id=row["run_id"]).one()
            assert row["status"] == "done" and run.status == "done" and run.user.username == "trial"
            assert row["headline"] and row["as_status"] in ("negative", "positive") and row["stage"]
        assert AuditEvent.query.filter(AuditEvent.detail.like("%via batch%")).count() == 2
    # A second call finds every file in the CSV and does nothing.
    again = runner.invoke(args=args)
    assert again.exit_code == 0 and "3 already" in again.output and "0 done" in again.output
    assert len(rows_of(out)) == 3
    with app.app_context():
        assert Run.query.count() == 2
    # A new file is picked up, the rest left alone.
    (folder / "c.png").write_bytes(scan_png)
    runner.invoke(args=args)
    assert [r["file"] for r in rows_of(out)][-1] == "c.png" and len(rows_of(out)) == 4


def test_a_batch_needs_an_active_clinician(make_app, tmp_path):
    app = make_app()
    create_user(app, "watcher", role="reviewer")
    result = app.test_cli_runner().invoke(args=["batch", str(tmp_path), "--task", "knee", "--user", "watcher"])
    assert result.exit_code != 0 and "not an active clinician" in result.output


def test_no_task_figure_overwrites_a_batch_column():
    from ops.batch import BASE_COLUMNS
    from tasks import all_tasks

    for name, task in all_tasks().items():
        figures = [column for column, _role, _key in task.batch_columns]
        assert not set(figures) & set(BASE_COLUMNS) and len(set(figures)) == len(figures), name
