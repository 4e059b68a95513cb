"""Clinical tasks, one module each, found by scanning this package.

A module that defines a module-level `TASK` is a task: adding one means adding its module, its
template partial (templates/tasks/<name>.html) and its models' registry entries. Task modules
import TensorFlow only inside the functions that run a model, so scanning them stays cheap.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from tasks.base import ModelOutput, OptionSpec, RoleSpec, Task, TaskInputError, TaskOutput  # noqa: F401


@cache
def _discovered() -> dict[str, Task]:
    found = []
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        task = getattr(module, "TASK", None)
        if task is not None:
            found.append(task)
    return {t.name: t for t in sorted(found, key=lambda t: (t.order, t.name))}


def all_tasks() -> dict[str, Task]:
    """Every task by name, in the order lists show them (`order`, then name)."""
    return dict(_discovered())


def get_task(name: str) -> Task | None:
    return _discovered().get(name)
