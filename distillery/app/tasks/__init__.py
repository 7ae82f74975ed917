"""Tasks, one per kind of data, each the part of a run that depends on it (see :class:`~distillery.app.tasks.task.Task`):
images and tables, next-token prediction, text classification."""
from __future__ import annotations

from distillery.app.config import RunConfig
from distillery.app.tasks.chat import ChatTask
from distillery.app.tasks.images import ImageTask
from distillery.app.tasks.next_token import LanguageModelTask
from distillery.app.tasks.task import Prepared, Task
from distillery.app.tasks.text_classification import TextClassificationTask

# Sources of text by data.dataset; every other source is images or a table.
TEXT_TASKS: dict[str, type[Task]] = {"text": LanguageModelTask, "chat": ChatTask,
                                     "text_classification": TextClassificationTask}

__all__ = ["ChatTask", "ImageTask", "LanguageModelTask", "Prepared", "TEXT_TASKS", "Task", "TextClassificationTask", "task_for"]


def task_for(config: RunConfig) -> Task:
    """The task of the config's data: ``data.dataset`` text or text_classification, else images and tables."""
    return TEXT_TASKS.get(config.data.dataset, ImageTask)()
