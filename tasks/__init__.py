"""Clinical tasks, one module each. Adding a task = a module + a template partial + registry entries."""
from __future__ import annotations

from tasks.base import ModelOutput, OptionSpec, RoleSpec, Task, TaskInputError, TaskOutput  # noqa: F401


def all_tasks() -> dict[str, Task]:
    # Imported lazily so that importing `tasks` never drags TensorFlow into web code.
    from tasks import sacroiliac, spine

    found = [sacroiliac.TASK, spine.TASK]
    from tasks import knee; found.append(knee.TASK)  # noqa: E702 - the knee task (issue 4)
    from tasks import hand; found.append(hand.TASK)  # noqa: E702 - the hand task (issue 3)
    return {t.name: t for t in found}


def get_task(name: str) -> Task | None:
    return all_tasks().get(name)
