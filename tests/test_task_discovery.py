"""Tasks are found by scanning the package: adding a module that defines TASK adds a task everywhere."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tasks

ECHO_TASK = '''
from tasks.base import ModelOutput, RoleSpec, TaskBase, TaskOutput


class EchoTask(TaskBase):
    name = "echo"
    title = "Echo: a task made for the discovery test"
    description = "Reads nothing."
    roles = (RoleSpec("reader", "Echo reader"),)
    order = 99

    def run(self, image, models, options):
        return TaskOutput(summary={}, models=[])

    def headline(self, summary, results):
        return "echo"


TASK = EchoTask()
'''


@pytest.fixture
def echo_task(tmp_path, monkeypatch):
    """One more module beside the real task modules, as a developer adding a task would write it."""
    folder = tmp_path / "more_tasks"
    folder.mkdir()
    (folder / "echo.py").write_text(ECHO_TASK)
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(folder)])
    tasks._discovered.cache_clear()
    yield
    sys.modules.pop("tasks.echo", None)
    tasks._discovered.cache_clear()


def test_the_tasks_are_found_in_their_order():
    assert list(tasks.all_tasks()) == ["sacroiliac", "sacroiliac_study", "spine", "knee", "hand"]
    assert tasks.get_task("knee").result_template == "tasks/knee.html"
    assert tasks.get_task("nope") is None


def test_modules_without_a_task_are_not_tasks():
    names = set(tasks.all_tasks())
    assert not names & {"base", "metrics", "knee_catalogue", "sacroiliac_inflammation", "sacroiliac_region"}


def test_a_new_module_is_a_new_task_on_the_form_and_in_the_api(echo_task, alice):
    assert "echo" in tasks.all_tasks()
    assert list(tasks.all_tasks())[-1] == "echo"                   # order 99: after the four tasks
    page = alice.get("/upload").get_data(as_text=True)
    assert "Echo: a task made for the discovery test" in page
    listed = alice.get("/api/v1/tasks").get_json()["tasks"]
    echo = next(t for t in listed if t["name"] == "echo")
    assert echo["roles"] == [{"name": "reader", "title": "Echo reader", "required": True}]
    assert echo["models"] == []


def test_every_task_has_its_template_partial():
    templates = Path(__file__).resolve().parent.parent / "templates"
    for task in tasks.all_tasks().values():
        assert (templates / task.result_template).is_file(), task.name
