"""gradleak's NVFlare filters on their own (no simulator): the defense filter applies gradleak's update-stage
defense to what a site sends, bit for bit; the recorder refuses nothing and never breaks a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare", reason="NVFlare is an optional extra: pip install 'gradleak[nvflare]'")

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants

from gradleak.defenses import LocalGaussian
from gradleak.errors import GradleakError
from gradleak.fl.nvflare import DefenseFilter
from gradleak.models import create_model
from gradleak.records import ClientUpdate

MODEL = "resnet8"


def _shareable(data: dict, kind: str = DataKind.WEIGHTS, round_: int = 3):
    s = DXO(data_kind=kind, data=data, meta={"num_examples": 4}).to_shareable()
    s.set_header(AppConstants.CURRENT_ROUND, round_)
    return s


def _ctx(task=None) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    if task is not None:
        ctx.set_prop(FLContextKey.TASK_DATA, task, private=True, sticky=False)
    return ctx


@pytest.mark.parametrize("kind", [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF])
def test_the_defense_filter_is_gradleaks_local_gaussian_on_the_sent_update(kind: str) -> None:
    torch.manual_seed(0)
    model = create_model(MODEL)
    glob = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    trained = {k: (v + np.float32(1e-3) * np.random.default_rng(1).standard_normal(v.shape).astype(v.dtype))
               if v.dtype == np.float32 else v for k, v in glob.items()}
    sent = trained if kind == DataKind.WEIGHTS else {k: trained[k] - glob[k] for k in glob}
    f = DefenseFilter([{"name": "local-gaussian", "options": {"sigma0": 0.5}}], MODEL, seed=9)
    f.handle_event(EventType.BEFORE_TASK_EXECUTION, _ctx(_shareable(glob)))
    out = from_shareable(f.process(_shareable(sent, kind), _ctx()))
    assert out.data_kind == kind and out.get_meta_prop("num_examples") == 4

    params = dict(model.named_parameters())
    delta = {k: torch.from_numpy(trained[k] - glob[k]) for k in params}
    expected = LocalGaussian(sigma0=0.5)(ClientUpdate(client=0, round=3, delta=delta), torch.Generator().manual_seed(9))
    for k in params:
        got = out.data[k] - (glob[k] if kind == DataKind.WEIGHTS else 0)
        assert isinstance(out.data[k], np.ndarray) and out.data[k].dtype == np.float32
        np.testing.assert_allclose(got, expected.delta[k].numpy(), atol=2e-7 * max(1.0, np.abs(glob[k]).max()))
    for k in dict(model.named_buffers()):  # BatchNorm statistics go out as the site computed them
        if k in out.data:
            np.testing.assert_array_equal(out.data[k], sent[k])


def test_the_defense_filter_takes_update_stage_defenses_only() -> None:
    with pytest.raises(GradleakError, match="update-stage"):
        DefenseFilter(["dp-sgd"], MODEL)


def test_what_a_defense_withholds_does_not_leave_the_site() -> None:
    torch.manual_seed(0)
    model = create_model(MODEL)
    glob = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    f = DefenseFilter(["withhold-bn"], MODEL)
    f.handle_event(EventType.BEFORE_TASK_EXECUTION, _ctx(_shareable(glob)))
    out = from_shareable(f.process(_shareable(glob), _ctx()))
    buffers = set(dict(model.named_buffers()))
    assert buffers and not buffers & set(out.data)
    assert set(dict(model.named_parameters())) <= set(out.data)


def test_a_result_must_answer_the_global_model_of_its_round() -> None:
    model = create_model(MODEL)
    glob = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    f = DefenseFilter(["withhold-bn"], MODEL)
    f.handle_event(EventType.BEFORE_TASK_EXECUTION, _ctx(_shareable(glob, round_=2)))
    with pytest.raises(GradleakError, match="round 3 answers the global model of round 2"):
        f.process_dxo(from_shareable(_shareable(glob, round_=3)), _shareable(glob, round_=3), _ctx())
