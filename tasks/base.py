"""The contract every clinical task module fulfils, and the defaults the tasks share.

A task knows what it accepts, which model roles it needs, how to turn a
decoded image into model inputs, and how to run the chosen models into a
JSON-safe result plus named images. It never touches Flask or the database:
`predict.py` stores what it returns and `web/` renders it.
"""
from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import wraps
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Protocol, TypeVar

import numpy as np

from imaging.io import DecodedImage
from model_loader import LoadedModel


class TaskInputError(ValueError):
    """The image decoded but does not suit this task (wrong modality, too small ...)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class ModelOutput:
    """What one model contributed to a run."""

    model_id: str
    role: str
    result: dict[str, Any]                      # JSON-safe figures shown on the page and by the API
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> uint8 grey or RGB, saved as PNG
    elapsed_ms: float = 0.0


@dataclass
class TaskOutput:
    summary: dict[str, Any]                     # run-level facts (e.g. which mask focused the Grad-CAM)
    models: list[ModelOutput]
    images: dict[str, np.ndarray] = field(default_factory=dict)  # run-level images (the input as shown)
    # A study's run: the picture that stands for the input (its middle slice, as shown), and files offered as
    # downloads (masks as NIfTI volumes on the input's grid), by name.
    input_picture: np.ndarray | None = None
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Findings:
    """One model's findings in words and numbers, for the PDF report (reports/pdf.py lays them out):
    label/value lines, notes (a withheld answer, a warning), tables as (title, header, rows), and the
    model's pictures as (image key, caption), most telling first."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)


def percent(value: Any, digits: int = 0) -> str:
    return f"{float(value) * 100:.{digits}f}%" if isinstance(value, (int, float)) else "-"


@dataclass(frozen=True)
class RoleSpec:
    name: str
    title: str
    required: bool = True


@dataclass(frozen=True)
class OptionSpec:
    """A task-specific field on the upload form and in the API (e.g. which structure to explain).

    kind: "choice" (value must be one of `choices`, pairs of value and label), "text" or "date".
    """

    name: str
    label: str
    kind: str = "choice"
    choices: tuple[tuple[str, str], ...] = ()
    default: str = ""
    help: str = ""
    max_length: int = 64


# The two options that let a task's runs be followed over time (web/timeline.py): one pseudonym groups a
# patient's runs, a date orders them. The pseudonym is the user's own study code, never a name.
PSEUDONYM_OPTION = OptionSpec("pseudonym", "Patient pseudonym (optional)", kind="text", max_length=40,
                              help="A study code or pseudonym, NOT the patient's name: it groups this patient's "
                                   "scans in the timeline and is visible only to you.")
TIMEPOINT_OPTION = OptionSpec("timepoint", "Date of the scan (optional)", kind="date",
                              help="Orders the scans of one pseudonym over time; the upload date is used when empty.")


# The "role" of a Measure or a batch column read from the run's summary (run-level figures a task computes from
# several models, such as the study's oedema by whichever method speaks for it) instead of one model's result.
SUMMARY_ROLE = "summary"


@dataclass(frozen=True)
class Measure:
    """A longitudinal measure of a task: a number read from each run, followed over time per pseudonym.

    `field` is a dotted key in the result of the first model of `role` (or of the run's summary for SUMMARY_ROLE);
    `split_by` a result field that makes one
    series per value (a knee's side). A change between consecutive points larger than the smallest detectable
    change (config `sdc_setting`, default `sdc`) is flagged: progression when it goes the way disease goes
    (`worse_when` "higher" or "lower"), improvement otherwise. `columns` are further (label, dotted key) values
    shown beside it in the table (the integer grade beside the continuous one)."""

    name: str
    title: str
    unit: str
    role: str
    field: str
    sdc_setting: str
    sdc: float
    worse_when: str = "higher"
    split_by: str | None = None
    split_names: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[tuple[str, str], ...] = ()
    axis: tuple[float, float] | None = None


def dotted(value: Any, key: str) -> Any:
    """`value["a"]["b"]` for key "a.b", None where a step is missing."""
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


@dataclass(frozen=True)
class ReviewScale:
    """The ordinal scale reviewers grade a task's runs on, and where a model's grade is read from.

    A task that declares `review_scale = ReviewScale(...)` gets grade choices on the review form and
    a weighted kappa between reviewers and each of its models on the models page. `labels[i]` names
    grade i. The model's grade is `result[field]` of each ModelOutput of role `role` (an int index
    into `labels`); a task whose grade needs more than a field lookup defines
    `model_grade(role, result) -> int | None` itself.
    """

    title: str                                   # e.g. "Stage", "Kellgren-Lawrence grade"
    labels: tuple[str, ...]
    role: str                                    # the model role that gives the grade
    field: str                                   # the result key holding the grade index

    def model_grade(self, role: str, result: dict[str, Any] | None) -> int | None:
        if role != self.role or not result:
            return None
        value = result.get(self.field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        grade = int(value)
        return grade if 0 <= grade < len(self.labels) and grade == value else None


def review_scale_of(task: Any) -> ReviewScale | None:
    """The task's review scale, or None for tasks reviewed in words only (agree/disagree + comment)."""
    return getattr(task, "review_scale", None) if task is not None else None


def model_grade_of(task: Any, role: str, result: dict[str, Any] | None) -> int | None:
    """A model's grade on the task's review scale, or None (no scale, another role, no grade)."""
    custom = getattr(task, "model_grade", None)
    if callable(custom):
        return custom(role, result)
    scale = review_scale_of(task)
    return scale.model_grade(role, result) if scale else None


class Task(Protocol):
    name: str
    title: str
    description: str
    roles: tuple[RoleSpec, ...]
    options: tuple[OptionSpec, ...]              # extra inputs; validated values arrive in run(options=...)
    result_template: str                        # template partial that renders a ModelOutput of this task
    field_labels: Mapping[str, str]              # display names for result keys on the comparison page
    review_scale: ReviewScale | None            # graded outputs (see ReviewScale); None: reviewed in words
    explanation_images: frozenset[str]           # image names that explain a decision (Grad-CAMs, heatmaps);
                                                 # the API omits them on include_heatmaps=false
    agreement_fields: Mapping[str, str]          # summary["comparison"] key -> the result field it judges
    order: int                                   # where the task sits in lists (upload form, API, models page)

    def check_input(self, image: DecodedImage) -> None:
        """Raise TaskInputError when the image cannot be analysed by this task."""

    def run(self, image: DecodedImage, models: dict[str, list[LoadedModel]],
            options: dict[str, Any]) -> TaskOutput:
        """Run the chosen models (grouped by role) on the image.

        When several models of one role ran, the summary carries their
        agreement under "comparison" for the side-by-side page; the keys that
        say whether the models agree on a result field are `agreement_fields`.
        """

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        """One line for the history list; `results` are dicts with model_id, role and result."""

    def check_study(self, study: Any) -> None:
        """Raise TaskInputError when a study (a task that reads studies) does not suit the task."""

    def is_explanation(self, image_name: str) -> bool:
        """Whether the image named so is one of `explanation_images`."""

    def disagreements(self, comparison: Mapping[str, Any]) -> set[str]:
        """The result fields `agreement_fields` mark as disagreed on in a summary's "comparison"."""

    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        """One model's findings in words and numbers for the PDF report."""


@dataclass
class Timer:
    """Milliseconds since the timer started; frozen once its `timed()` block ends."""

    start: float = field(default_factory=time.perf_counter)
    end: float | None = None

    @property
    def ms(self) -> float:
        return ((self.end if self.end is not None else time.perf_counter()) - self.start) * 1000


@contextmanager
def timed() -> Iterator[Timer]:
    """`with timed() as t: ...` -> `t.ms`, readable inside the block (time so far) and after it."""
    timer = Timer()
    try:
        yield timer
    finally:
        timer.end = time.perf_counter()


Method = TypeVar("Method", bound=Callable[..., Any])


def timed_model(method: Method) -> Method:
    """Times a task's per-model step into its ModelOutput's `elapsed_ms`.

    The step returns the ModelOutput, or a tuple that starts with it (with what else the run needs).
    """
    @wraps(method)
    def run_timed(*args: Any, **kwargs: Any) -> Any:
        with timed() as t:
            returned = method(*args, **kwargs)
        output = returned[0] if isinstance(returned, tuple) else returned
        output.elapsed_ms = t.ms
        return returned

    return run_timed  # type: ignore[return-value]


# Who hears of a run's progress: the job sets a callable taking a stage key (predict.execute_run); outside a
# job nobody listens. A context variable, so that each job thread hears only its own task.
_PROGRESS: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("progress", default=None)


@contextmanager
def reporting_progress(report: Callable[[str], None]) -> Iterator[None]:
    """Within the block, the task's stages go to `report` ("model:<id>", then "explain:<id>")."""
    token = _PROGRESS.set(report)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def model_stage(model_id: str) -> str:
    return f"model:{model_id}"


def explanation_stage(model_id: str) -> str:
    return f"explain:{model_id}"


def _report(stage: str) -> None:
    report = _PROGRESS.get()
    if report is not None:
        report(stage)


def explaining(model: LoadedModel) -> None:
    """Called by a task as it begins a model's Grad-CAM: the job's progress shows the explanation stage."""
    _report(explanation_stage(model.entry.id))


def run_role(models: Mapping[str, Sequence[LoadedModel]], role: str, step: Callable[[LoadedModel], Any]
             ) -> tuple[list[ModelOutput], dict[str, Any]]:
    """Run `step` on each chosen model of `role`, in the order chosen: their outputs, and by model id
    what else each step returned for the rest of the run (a mask, the detections).

    A step returns its ModelOutput, or a tuple of it and those extras.
    """
    outputs: list[ModelOutput] = []
    extras: dict[str, Any] = {}
    for model in models.get(role, []):
        _report(model_stage(model.entry.id))
        returned = step(model)
        if isinstance(returned, tuple):
            output, *rest = returned
            extras[model.entry.id] = rest[0] if len(rest) == 1 else tuple(rest)
        else:
            output = returned
        outputs.append(output)
    return outputs, extras


def all_equal(values: Any) -> bool:
    """Whether every model gave the same value (the agreement a comparison reports)."""
    return len(set(values)) == 1


class TaskBase:
    """Defaults every task shares; a task module subclasses it and sets what differs.

    Subclasses set `name`, `title`, `description` and `roles`, and implement `run` and `headline`.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    roles: ClassVar[tuple[RoleSpec, ...]]
    options: ClassVar[tuple[OptionSpec, ...]] = ()
    field_labels: ClassVar[Mapping[str, str]] = MappingProxyType({})
    review_scale: ClassVar[ReviewScale | None] = None
    explanation_images: ClassVar[frozenset[str]] = frozenset()
    agreement_fields: ClassVar[Mapping[str, str]] = MappingProxyType({})
    order: ClassVar[int] = 100
    accepted_modalities: ClassVar[tuple[str | None, ...]] = (None,)   # None: PNG/JPEG, whose modality we cannot read
    reads: ClassVar[str] = "images"          # what the task reads, for the wrong-modality message ("MRI")
    single_image: ClassVar[str] = "image"    # what one image is, for the wrong-shape message ("MRI slice")
    # The image recogniser's kind (tasks/recognition.KINDS) this task reads; None: it reads anything.
    recognised_as: ClassVar[str | None] = None
    # Larger uploads are shrunk to this many pixels before anything else (predict.analyze): the models
    # read a few hundred pixels a side, the overlays are stored at the upload's size.
    max_pixels: ClassVar[int] = 4_000_000
    # The headline figures of a batch's CSV (ops/batch.py): (column, model role, dotted result key).
    batch_columns: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    # What the timeline follows over time for one pseudonym (web/timeline.py); a task that declares measures
    # takes PSEUDONYM_OPTION and TIMEPOINT_OPTION among its options.
    longitudinal: ClassVar[tuple[Measure, ...]] = ()
    # A task that reads whole studies (imaging.volume.Study: NIfTI volumes, DICOM series, or one slice as a study
    # of one) gets the study in `run` instead of one DecodedImage, checked by `check_study`.
    reads_studies: ClassVar[bool] = False

    @property
    def result_template(self) -> str:
        return f"tasks/{self.name}.html"

    def check_input(self, image: DecodedImage) -> None:
        """The right modality and one grey image; tasks with further limits extend this."""
        self._check_modality(image.modality)
        if image.pixels.ndim != 2:
            raise TaskInputError(f"Expected a single grey {self.single_image}.")

    def check_study(self, study: Any) -> None:
        """A study task's input checks (the modality of every series; a NIfTI volume has none to read);
        tasks with further limits extend this."""
        for volume in study.volumes:
            if volume.meta.get("modality") is not None:
                self._check_modality(volume.meta["modality"])

    def _check_modality(self, modality: str | None) -> None:
        if modality not in self.accepted_modalities:
            raise TaskInputError(f"This task reads {self.reads}; the file is a {modality} image. "
                                 "Choose the task that matches the scan.")

    def is_explanation(self, image_name: str) -> bool:
        """Whether a stored image explains a decision (the API leaves these out on include_heatmaps=false)."""
        return image_name in self.explanation_images

    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        """A model's findings for the report; tasks say it in their own words. This default lists the
        result's plain figures under their labels (the same fallback as the generic template partial)."""
        if result.get("withheld"):
            return Findings(notes=[f"Withheld: {result['withheld']}"])
        lines = [(self.field_labels.get(k, k.replace("_", " ").capitalize()), str(v)) for k, v in result.items()
                 if isinstance(v, (str, int, float, bool))]
        return Findings(lines=lines[:30])

    def disagreements(self, comparison: Mapping[str, Any]) -> set[str]:
        """Result fields the models disagree on, from a summary's "comparison"."""
        return {result_field for key, result_field in self.agreement_fields.items() if comparison.get(key) is False}

    def agreement(self, values_by_field: Mapping[str, Any]) -> dict[str, bool]:
        """The comparison's agreement keys from {result field: the models' values of it}."""
        return {key: all_equal(values_by_field[result_field]) for key, result_field in self.agreement_fields.items()
                if result_field in values_by_field}
