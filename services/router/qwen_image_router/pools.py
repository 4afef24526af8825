"""Which models the router serves: a pool of workers per model, learned from the workers'
own load reports (static or Kubernetes discovery alike).

A worker joins the pool of the model its last good report named and stays in it through
failed polls (its load is then unknown, so it gets no jobs, but the model stays listed).
MODEL_NAME is always served, as a text-to-image model unless its workers say otherwise, so
`/v1/models` and `/healthz` answer as the spec says before any worker has reported.
"""

from __future__ import annotations

from qwen_image_common.contract import MAX_EDIT_PICTURES, Task
from qwen_image_router.errors import ModelNotAvailable
from qwen_image_router.registry import WorkerRegistry, WorkerState


class ModelPools:
    """A view over the registry; keeps nothing of its own, so it is never out of date."""

    def __init__(self, registry: WorkerRegistry, default_model: str) -> None:
        self._registry = registry
        self.default_model = default_model

    def served(self) -> dict[str, Task]:
        """Every served model's name, as its workers spell it, and what it does."""
        models: dict[str, Task] = {self.default_model: "generate"}
        for worker in self._registry.workers():
            if worker.reported is None:
                continue
            name = self._known_name(models, worker.reported.model) or worker.reported.model
            models[name] = worker.reported.task
        return models

    def resolve(self, requested: str | None, task: Task) -> str:
        """The served model a request names (any letter case; none: MODEL_NAME, or for an
        edit the first edit model) that does `task`; ModelNotAvailable otherwise (an edit
        model asked to generate included)."""
        models = self.served()
        if requested is None and task == "edit":
            requested = next((name for name, does in models.items() if does == task), None)
        wanted = self.default_model if requested is None else requested
        name = self._known_name(models, wanted)
        if name is None or models[name] != task:
            raise ModelNotAvailable(wanted)
        return name

    def workers(self, model: str) -> list[WorkerState]:
        """The pool of `model` (a name `resolve` gave)."""
        return [
            worker
            for worker in self._registry.workers()
            if worker.reported is not None and worker.reported.model.casefold() == model.casefold()
        ]

    def max_pictures(self, model: str) -> int:
        """The input pictures every worker of `model`'s pool takes (the fewest any reports)."""
        reports = [worker.reported for worker in self.workers(model) if worker.reported]
        return min((report.max_pictures for report in reports), default=MAX_EDIT_PICTURES)

    @staticmethod
    def _known_name(models: dict[str, Task], wanted: str) -> str | None:
        return next((name for name in models if name.casefold() == wanted.casefold()), None)
