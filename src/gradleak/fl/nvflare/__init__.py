"""NVIDIA FLARE integration: client-side defense and leakage-gate filters, a server-side update recorder.

Install with ``pip install 'gradleak[nvflare]'`` (NVFlare 2.9). All three are NVFlare *filters* — the mechanism
NVFlare documents for privacy on the client and for inspecting what crosses the wire (task-data filters act on
what the server sends, task-result filters on what a client returns). Filters work with every workflow
(the ``FedAvgRecipe``'s controller, ``ScatterAndGather``, your own), which is why the recorder is one too.

- :class:`DefenseFilter` (client, task result): gradleak's update-stage defenses by name on the update a
  site sends, e.g. ``local-gaussian`` with ``sigma0`` and ``percentile`` (the hospital paper's
  ``GaussianPrivacy`` filter), ``prune-update``, ``withhold-bn``, ``withhold-layers``, ``laplace``.
- :class:`LeakageGateFilter` (client, task result): :class:`gradleak.gate.LeakageGate` on the site's own
  update — pass, add noise until no image leaks, or block with NVFlare's ``ContentBlockedException`` (the
  server then receives ``TASK_RESULT_FILTER_ERROR`` and aggregates without this site). The evidence is written
  on the site, never sent.
- :class:`UpdateRecorder` (server, task data *and* task result): every global model the server sends and
  every update it receives, into a gradleak :class:`~gradleak.fl.store.UpdateStore`, so that
  ``gradleak attack --store`` works on a real NVFlare run.

Filters are configured with JSON-like arguments (NVFlare writes them into the job's config): models, data
and priors are given by import path (``"mypackage.model:Net"``, ``"mypackage.data:site_images"``).
:func:`record_updates`, :func:`add_leakage_gate` and :func:`add_defenses` add them to a recipe.

Examples
--------
>>> recipe = FedAvgRecipe(name="hospital", model=Net(), min_clients=3, train_script="client.py")  # doctest: +SKIP
>>> record_updates(recipe, "/data/store", model="model:Net", input_spec={"size": 28, "channels": 1})  # doctest: +SKIP
>>> add_leakage_gate(recipe, ["site-1"], model="model:Net", data="data:site_images", ...)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError

try:  # NVFlare is an optional extra: fail with one line when it is missing
    import nvflare  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise GradleakError("gradleak's NVFlare integration needs NVFlare: pip install 'gradleak[nvflare]'") from exc

from gradleak.fl.nvflare.filters import DefenseFilter, LeakageGateFilter
from gradleak.fl.nvflare.recorder import UpdateRecorder

__all__ = ["DefenseFilter", "LeakageGateFilter", "UpdateRecorder", "add_defenses", "add_leakage_gate",
           "record_updates"]


def _app_packages(recipe: Any) -> None:
    """Tell the Job API that gradleak is an installed package, not custom code to copy into the job."""
    job = getattr(recipe, "_job", recipe)  # a Recipe, or a FedJob
    current = list(getattr(getattr(job, "job", None), "app_packages", None) or [])
    if "gradleak" not in current:
        job.set_app_packages([*current, "gradleak"])


def record_updates(recipe: Any, store: str | Path, *, model: str, input_spec: dict | None = None,
                   recipe_fields: dict | None = None, sites: Sequence[str] = (),
                   examples_key: str = "num_examples", tasks: Sequence[str] = ("train",)) -> None:
    """Add an :class:`UpdateRecorder` to ``recipe`` (an NVFlare Recipe) as server output and input filter for
    ``tasks`` (NVFlare matches filters to task names literally; the FedAvg recipes' task is ``"train"``)."""
    path = str(Path(store).expanduser().resolve())
    for add in (recipe.add_server_output_filter, recipe.add_server_input_filter):
        add(UpdateRecorder(path, model, input_spec=input_spec, recipe=recipe_fields, sites=list(sites),
                           examples_key=examples_key), tasks=list(tasks))
    _app_packages(recipe)


def add_defenses(recipe: Any, defenses: list, *, model: str, sites: Sequence[str] | None = None,
                 seed: int | None = None, tasks: Sequence[str] = ("train",)) -> None:
    """Add a :class:`DefenseFilter` to the result filters of ``sites`` (all when ``None``) for ``tasks``."""
    recipe.add_client_output_filter(DefenseFilter(defenses, model, seed=seed), tasks=list(tasks),
                                    clients=list(sites) if sites is not None else None)
    _app_packages(recipe)


def add_leakage_gate(recipe: Any, sites: Sequence[str] | None, /, *, tasks: Sequence[str] = ("train",),
                     **options: Any) -> None:
    """Add a :class:`LeakageGateFilter` (``options``: its parameters) to the result filters of ``sites`` (all when
    ``None``) for ``tasks``."""
    recipe.add_client_output_filter(LeakageGateFilter(**options), tasks=list(tasks),
                                    clients=list(sites) if sites is not None else None)
    _app_packages(recipe)
