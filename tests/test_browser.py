"""The pages a person uses, driven in a real browser (Playwright with Debian's chromium) against the project's
own server (gunicorn with gunicorn.conf.py and the committed models, on 127.0.0.1): sign-up and login, each
task's upload and result, comparison, history, review, a timeline, the PDF report, the admin pages.

On each page axe-core (through Playwright) must find no serious or critical accessibility violation, and the
upload is done with the keyboard alone. A screenshot of every page is kept under $JOINTSCAN_BROWSER_ARTIFACTS
(default test-artifacts/browser); the CI run prints the folder. Without chromium or Playwright these tests
skip and say so, except where JOINTSCAN_REQUIRE_BROWSER=1 (the CI run), where they fail.
"""
from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import requests

from tests.data_gate import data_dir, need
from tests.test_pacs import loaded, orthanc  # noqa: F401  (fixtures: the test PACS and what it holds)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("JOINTSCAN_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("JOINTSCAN_BROWSER_ARTIFACTS", REPO / "test-artifacts" / "browser"))
PASSWORD = "a browser test passphrase 9"
BLOCKING = ("serious", "critical")

pytestmark = pytest.mark.browser


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
        from axe_playwright_python.sync_playwright import Axe  # noqa: F401
    except ImportError as exc:
        reason = f"Playwright is not installed ({exc})"
    else:
        reason = None if Path(CHROMIUM).exists() else f"no chromium at {CHROMIUM} (Debian: chromium)"
    if reason:
        if os.environ.get("JOINTSCAN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests are required here: {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """gunicorn serving the app with the committed models, an admin, and sign-up open."""
    _browser_or_skip()
    root = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "JOINTSCAN_INSTANCE_PATH": str(root / "instance"), "SECRET_KEY": secrets.token_hex(32),
           "FLASK_APP": "wsgi", "TF_CPP_MIN_LOG_LEVEL": "2", "JOINTSCAN_SIGNUP_OPEN": "1", "CUDA_VISIBLE_DEVICES": "",
           "JOINTSCAN_UPLOAD_WAIT_S": "0", "JOINTSCAN_ANALYSIS_LIMITS_PER_USER": "1000 per minute",
           "JOINTSCAN_ANALYSIS_LIMITS_PER_ADDRESS": "1000 per minute", "HOST": "127.0.0.1",
           "PORT": str(_free_port()), "WORKERS": "1", "PYTHONPATH": str(REPO)}
    for key in ("JOINTSCAN_RESULTS_DIR", "JOINTSCAN_MODELS_DIR", "DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    if os.environ.get("JOINTSCAN_TEST_ORTHANC_URL"):        # the second pass: the test PACS is running
        user, password = os.environ["JOINTSCAN_TEST_ORTHANC_AUTH"].split(":", 1)
        env.update({"JOINTSCAN_DICOMWEB_URL": os.environ["JOINTSCAN_TEST_ORTHANC_URL"] + "/dicom-web",
                    "JOINTSCAN_DICOMWEB_USER": user, "JOINTSCAN_DICOMWEB_PASSWORD": password})
    for args in (["prepare"], ["create-user", "root", "--role", "admin", "--password", PASSWORD],
                 ["create-user", "rhea", "--role", "reviewer", "--password", PASSWORD]):
        subprocess.run([sys.executable, "-m", "flask", *args], cwd=REPO, env=env, check=True, capture_output=True,
                       timeout=300)
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the server did not start: " + (root / "server.log").read_text()[-2000:])
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Visitor:
    """One person's browser context: pages, the axe check, screenshots."""

    def __init__(self, browser, base: str, name: str):
        self.context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.base, self.name = base, name
        self.page.set_default_timeout(60_000)

    def check(self, shot: str) -> None:
        """No serious or critical axe violation on the current page; its screenshot kept."""
        from axe_playwright_python.sync_playwright import Axe

        self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        results = Axe().run(self.page)
        blocking = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                    for v in results.response["violations"] if v.get("impact") in BLOCKING]
        assert not blocking, f"{shot} ({self.page.url}):\n" + "\n".join(blocking)

    def login(self, username: str) -> None:
        self.page.goto("/login")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name=re.compile("log in", re.I)).click()
        self.page.wait_for_url(re.compile(r"/(upload|history|review|admin)"))

    def upload(self, task: str, scan: Path, models: list[str] | None = None, options: dict | None = None) -> str:
        """Upload through the form (mouse-free where it matters is tested apart); returns the run's id once its
        result page shows the result."""
        page = self.page
        page.goto(f"/upload?task={task}")
        page.select_option("#task-select", task)
        if models is not None:
            for box in page.locator(f'.task-models[data-task="{task}"] input[name="model_ids"]').all():
                box.set_checked(box.get_attribute("value") in models)
        for name, value in (options or {}).items():
            page.fill(f"#option-{task}-{name}", value)
        page.set_input_files("input[type=file]", str(scan))
        page.click("#analyse-button")
        return self.wait_result()

    def wait_result(self) -> str:
        page = self.page
        page.wait_for_url(re.compile(r"/runs/[0-9a-f]{32}$"))
        page.wait_for_selector("#run-progress", state="detached", timeout=180_000)
        assert "The analysis failed" not in page.content(), page.content()[:2000]
        return page.url.rsplit("/", 1)[1]

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """One scan per task: the tasks' phantoms, and real radiographs and MRI where the data is here."""
    from training.phantoms.hand import generate_hand
    from training.phantoms.sacroiliac import generate_case

    folder = tmp_path_factory.mktemp("scans")
    out = {}
    cv2.imwrite(str(folder / "sij.png"), generate_case(11).image)
    out["sacroiliac"] = folder / "sij.png"
    cv2.imwrite(str(folder / "hand.png"), generate_hand(3, 0).image)
    out["hand"] = folder / "hand.png"
    knees = sorted((data_dir() / "knee_kl" / "val" / "2").glob("*.jpg"))
    if knees:
        out["knee"], out["knee_later"] = knees[0], knees[1]
    spines = sorted((data_dir() / "spine_mri" / "images").glob("*.png"))
    if spines:
        out["spine"] = spines[len(spines) // 2]
    return out


@pytest.fixture(scope="module")
def clinician(browser, server):
    """Signs up through the sign-up page (checked), then stays logged in for the module."""
    visitor = Visitor(browser, server, "clinician")
    page = visitor.page
    page.goto("/signup")
    visitor.check("01-signup")
    page.get_by_label("Username").fill("dr_browser")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label(re.compile("Confirm|Repeat", re.I)).fill(PASSWORD)
    page.get_by_role("button", name=re.compile("sign up|create", re.I)).click()
    page.wait_for_url(re.compile(r"/(upload|history)"))
    yield visitor
    visitor.close()


def test_login_page_and_a_wrong_password(browser, server, clinician):
    visitor = Visitor(browser, server, "anonymous")
    page = visitor.page
    page.goto("/login")
    visitor.check("02-login")
    page.get_by_label("Username").fill("dr_browser")
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    assert page.locator("[role=alert]").count() >= 1 and "/login" in page.url
    visitor.login("dr_browser")
    visitor.close()


def test_upload_with_the_keyboard_alone(clinician, scans):
    """Tab to each control, choose the task with the arrow keys, open the file chooser with Space, submit with
    Enter: the run is made and its result shown."""
    page = clinician.page
    page.goto("/upload")
    clinician.check("03-upload")
    page.focus("body")
    for _ in range(80):                          # Tab through the page until the task select has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "task-select":
            break
    assert page.evaluate("document.activeElement.id") == "task-select"
    page.keyboard.press("Home")                  # the first task: sacroiliac MRI
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.type") == "file":
            break
    assert page.evaluate("document.activeElement.type") == "file"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(scans["sacroiliac"]))
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "analyse-button":
            break
    assert page.evaluate("document.activeElement.id") == "analyse-button"
    page.keyboard.press("Enter")
    clinician.wait_result()
    assert "Sacroiliac" in page.content()


@pytest.mark.parametrize("task", ["sacroiliac", "hand", "knee", "spine"])
def test_each_task_upload_and_result(clinician, scans, task):
    if task not in scans:
        need(data_dir() / {"knee": "knee_kl", "spine": "spine_mri"}[task])
    run_id = clinician.upload(task, scans[task])
    page = clinician.page
    clinician.check(f"10-result-{task}")
    images = [img.get_attribute("src") for img in page.locator("main img").all()]
    assert images
    for src in images:              # every picture the page shows is served to this user (some load lazily)
        answer = page.request.get(src)
        assert answer.status == 200 and answer.headers["content-type"] == "image/png", src
    assert run_id in page.url


def test_a_study_and_its_slice_viewer_with_the_keyboard(clinician, tmp_path):
    """A whole sacroiliac study (STIR and T1 NIfTI together) through the upload page; on its result the slice
    viewer moves with the arrow keys, its overlays toggle from the keyboard, and every slice picture it shows is
    served."""
    root = data_dir() / "sij_mri_nifti" / "images" / "pre"
    need(root / "1007_STIR.nii.gz")
    page = clinician.page
    page.goto("/upload?task=sacroiliac_study")
    page.select_option("#task-select", "sacroiliac_study")
    page.set_input_files("input[type=file]", [str(root / "1007_STIR.nii.gz"), str(root / "1007_T1W.nii.gz")])
    page.click("#analyse-button")
    clinician.wait_result()
    viewer = page.locator("#slice-viewer")
    assert viewer.count() == 1
    clinician.check("12-result-sacroiliac-study")
    first = page.locator("#slice-label").inner_text()
    start = int(re.search(r"slice (\d+) of", first).group(1))
    page.focus("#slice-next")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    n = int(viewer.get_attribute("data-slices"))
    expected = min(start + 1, n)
    assert page.locator("#slice-label").inner_text() == f"slice {expected} of {n}"
    assert page.locator(f'tr[data-slice="{expected}"]').get_attribute("aria-current") == "true"
    src_with = page.get_attribute("#slice-picture", "src")
    page.focus("#layer-oedema")
    page.keyboard.press("Space")                    # oedema off
    page.focus("#layer-region")
    page.keyboard.press("Space")                    # region off: the bare slice
    src_bare = page.get_attribute("#slice-picture", "src")
    assert src_bare != src_with
    for src in (src_with, src_bare):
        answer = page.request.get(src)
        assert answer.status == 200 and answer.headers["content-type"] == "image/png", src
    clinician.check("13-slice-viewer-bare")
    link = page.locator('a[href$="/files/region.nii.gz"]')
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename.endswith("region.nii.gz")


def test_comparison_history_and_report(clinician, scans):
    run_id = clinician.upload("sacroiliac", scans["sacroiliac"],
                              models=["sij-attention-unet", "sij-unet-ref", "sij-dual-head", "sij-cnn3-ref"])
    page = clinician.page
    page.get_by_role("link", name=re.compile("Compare models", re.I)).click()
    page.wait_for_url(re.compile(r"/compare$"))
    clinician.check("11-compare")
    with page.expect_download() as download:
        page.goto(f"/runs/{run_id}")
        page.get_by_role("link", name="PDF report").click()
    pdf = Path(download.value.path()).read_bytes()
    from pypdf import PdfReader

    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert run_id in text and "research and education use only" in text.lower()
    (ARTIFACTS / "12-report.pdf").write_bytes(pdf)
    page.goto("/history")
    clinician.check("13-history")
    assert page.locator(f'a[href="/runs/{run_id}"]').count() >= 1


def test_review_by_a_reviewer(browser, server, clinician, scans):
    run_id = clinician.upload("sacroiliac", scans["sacroiliac"])
    page = clinician.page
    page.get_by_role("button", name=re.compile("^Share", re.I)).click()
    reviewer = Visitor(browser, server, "reviewer")
    reviewer.login("rhea")
    reviewer.page.goto("/review")
    reviewer.check("20-review-queue")
    reviewer.page.goto(f"/review/runs/{run_id}")
    reviewer.check("21-review-run")
    reviewer.page.get_by_role("radio", name=re.compile("Agree with the model", re.I)).check()
    reviewer.page.get_by_role("button", name=re.compile("Save verdict", re.I)).click()
    reviewer.page.wait_for_load_state()
    assert "agree" in reviewer.page.content().lower()
    reviewer.close()


def test_a_knee_timeline(clinician, scans):
    if "knee" not in scans:
        need(data_dir() / "knee_kl")
    clinician.upload("knee", scans["knee"], options={"pseudonym": "BR-7", "timepoint": "2024-02-01"})
    clinician.upload("knee", scans["knee_later"], options={"pseudonym": "BR-7", "timepoint": "2026-02-01"})
    page = clinician.page
    page.goto("/timeline/")
    clinician.check("30-timelines")
    page.get_by_label("Patient pseudonym").fill("BR-7")
    page.get_by_role("button", name="Show the timeline").click()
    page.wait_for_url(re.compile(r"/timeline/[0-9a-f]{32}$"))
    assert "BR-7" not in page.url
    clinician.check("31-timeline-patient")
    chart = page.locator("img.timeline-chart")
    assert chart.count() == 1 and chart.evaluate("i => i.complete && i.naturalWidth === 640")


def test_the_admin_pages(browser, server):
    admin = Visitor(browser, server, "admin")
    admin.login("root")
    for n, path in enumerate(("/admin/", "/admin/users", "/admin/models", "/admin/audit", "/models/", "/account/")):
        admin.page.goto(path)
        assert admin.page.url.endswith(path.rstrip("/")) or admin.page.url.endswith(path)
        admin.check(f"40-admin-{n}-{path.strip('/').replace('/', '-') or 'index'}")
    admin.close()


@pytest.mark.services
def test_the_pacs_page_against_the_test_orthanc(clinician, loaded):  # noqa: F811
    """Search, pick the series, analyse, send the results back: the second pass, with the test Orthanc."""
    page = clinician.page
    page.goto("/pacs/")
    clinician.check("50-pacs-search")
    page.get_by_label("Accession number").fill(loaded["knee"])
    page.get_by_role("button", name="Search the PACS").click()
    page.wait_for_selector("text=Show its series")
    assert "Gonzalez" not in page.content()
    clinician.check("51-pacs-studies")
    page.get_by_role("button", name=re.compile("Show its series")).first.click()
    page.wait_for_selector("text=Series of the study")
    clinician.check("52-pacs-series")
    page.get_by_role("button", name=re.compile("^Analyse")).first.click()
    clinician.wait_result()
    page.get_by_role("button", name="Send the results to the PACS").click()
    page.wait_for_selector("text=Sent to the PACS")
    clinician.check("53-pacs-sent")
