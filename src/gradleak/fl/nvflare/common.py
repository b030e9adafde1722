"""Shared parts of the NVFlare integration: NVFlare's imports, tensors in and out of DXOs, the round of a
task, and a filter base that tracks the global model a site received."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from torch import nn

from gradleak.errors import GradleakError
from gradleak.fl.local import model_state
from gradleak.records import ClientUpdate

__all__ = ["WEIGHT_KINDS", "GlobalTracker", "delta_of", "like_original", "round_of", "site_lock", "split_state",
           "to_tensors"]


WEIGHT_KINDS = [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF]
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def site_lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


def to_tensors(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in data.items()}


def like_original(value: torch.Tensor, original: Any) -> Any:
    """``value`` in the container type and dtype of ``original`` (numpy array or tensor)."""
    if isinstance(original, torch.Tensor):
        return value.to(original.dtype)
    return value.detach().cpu().numpy().astype(np.asarray(original).dtype, copy=False)


def split_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    params, buffers = model_state(model)
    missing = [k for k in params if k not in state]
    if missing:
        raise GradleakError(f"the exchanged model lacks parameters {missing[:3]}: is the filter's model the one "
                            "the job trains?")
    return ({k: state[k].to(params[k].dtype) for k in params},
            {k: state[k].to(buffers[k].dtype) for k in buffers if k in state})


def delta_of(dxo: DXO, glob_params: Mapping[str, torch.Tensor],
           glob_buffers: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """A WEIGHTS or WEIGHT_DIFF result as gradleak's (delta, buffers) against the global model it answers."""
    result = to_tensors(dxo.data)  # a defense may have withheld layers or buffers: what is there counts
    if dxo.data_kind == DataKind.WEIGHT_DIFF:
        delta = {k: result[k].to(v.dtype) for k, v in glob_params.items() if k in result}
        buffers = {k: v + result[k].to(v.dtype) for k, v in glob_buffers.items() if k in result}
    else:
        delta = {k: result[k].to(v.dtype) - v for k, v in glob_params.items() if k in result}
        buffers = {k: result[k].to(v.dtype) for k, v in glob_buffers.items() if k in result}
    if not delta:
        raise GradleakError("the result holds none of the model's parameters: is the filter's model the one the "
                            "job trains?")
    return delta, buffers


def round_of(shareable: Shareable, fl_ctx: FLContext) -> int:
    value = shareable.get_header(AppConstants.CURRENT_ROUND)
    if value is None:
        value = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
    if value is None:
        raise GradleakError("the shareable carries no current_round header: cannot tell the round")
    return int(value)


class GlobalTracker(Filter):
    """Keeps the global model a client last received (the task data), to turn its result into an update."""

    def _init_tracker(self) -> None:
        self._received: dict[str, Any] | None = None
        self._received_round: int | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.BEFORE_TASK_EXECUTION:
            task = fl_ctx.get_prop(FLContextKey.TASK_DATA)
            self._received, self._received_round = None, None
            if isinstance(task, Shareable):
                try:
                    dxo = from_shareable(task)
                except Exception:  # a task without a DXO (e.g. a metrics request)
                    dxo = None
                if dxo is not None and dxo.data_kind == DataKind.WEIGHTS and isinstance(dxo.data, dict):
                    self._received = dict(dxo.data)
                    round_ = task.get_header(AppConstants.CURRENT_ROUND)
                    self._received_round = int(round_) if round_ is not None else None

    def _update_from(self, dxo: DXO, model: nn.Module, site: str, round_: int) -> tuple[ClientUpdate, dict]:
        """The result ``dxo`` as a gradleak update, and the global state dict (tensors) it answers."""
        if self._received is None:
            raise GradleakError(f"{type(self).__name__}: no global model was received before this result")
        if self._received_round is not None and self._received_round != round_:
            raise GradleakError(f"{type(self).__name__}: a result of round {round_} answers the global model of "
                                f"round {self._received_round}")
        g_params, g_buffers = split_state(model, to_tensors(self._received))
        delta, buffers = delta_of(dxo, g_params, g_buffers)
        examples = dxo.get_meta_prop("num_examples")
        update = ClientUpdate(client=0, round=round_, delta=delta, buffers=buffers,
                              num_examples=int(examples) if isinstance(examples, int | float) else 0,
                              metadata={"site": site})
        return update, {**g_params, **g_buffers}

    @staticmethod
    def _to_dxo(dxo: DXO, original: ClientUpdate, update: ClientUpdate,
                global_state: Mapping[str, torch.Tensor]) -> DXO:
        """``dxo`` with its tensors replaced by ``update``'s (same kind, containers and dtypes); what a defense
        withheld from ``original`` (layers, BatchNorm buffers) is left out."""
        withheld = ({k for k in original.delta if k not in update.delta}
                    | {k for k in original.buffers if k not in update.buffers})
        data = {k: v for k, v in dxo.data.items() if k not in withheld}
        for k, d in update.delta.items():
            value = d if dxo.data_kind == DataKind.WEIGHT_DIFF else global_state[k] + d
            data[k] = like_original(value, data[k])
        return DXO(data_kind=dxo.data_kind, data=data, meta=dict(dxo.meta))
