"""The contract every clinical task module fulfils.

A task knows what it accepts, which model roles it needs, how to turn a
decoded image into model inputs, and how to run the chosen models into a
JSON-safe result plus named images. It never touches Flask or the database:
`predict.py` stores what it returns and `web/` renders it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # imported for type hints only, keeps task import cheap
    from imaging.io import DecodedImage
    from model_loader import LoadedModel


class TaskInputError(ValueError):
    """The image decoded but does not suit this task (wrong modality, too small ...)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def check_modality(image: "DecodedImage", accepted: tuple[str | None, ...], reads: str, single: str) -> None:
    """The check every task starts with: the right modality (None = PNG/JPEG) and one grey image.

    `reads` names what the task reads ("MRI"), `single` what one image is ("MRI slice").
    """
    if image.modality not in accepted:
        raise TaskInputError(f"This task reads {reads}; the file is a {image.modality} image. "
                             "Choose the task that matches the scan.")
    if image.pixels.ndim != 2:
        raise TaskInputError(f"Expected a single grey {single}.")


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
    result_template: str
    field_labels: dict[str, str]                 # display names for result keys on the comparison page
    # Optional: `review_scale: ReviewScale` for graded outputs (see ReviewScale); tasks without one
    # are reviewed as agree/disagree with a score in words and a comment.
    # Image names containing "gradcam" or "heatmap" are explanations: the API omits them
    # when a client asks for include_heatmaps=false.                        # template partial that renders a ModelOutput of this task

    def check_input(self, image: "DecodedImage") -> None:
        """Raise TaskInputError when the image cannot be analysed by this task."""

    def run(self, image: "DecodedImage", models: dict[str, list["LoadedModel"]],
            options: dict[str, Any]) -> TaskOutput:
        """Run the chosen models (grouped by role) on the image.

        When several models of one role ran, the summary carries their
        agreement under "comparison" for the side-by-side page.
        """

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        """One line for the history list; `results` are dicts with model_id, role and result."""
