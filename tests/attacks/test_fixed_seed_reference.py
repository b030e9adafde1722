"""Fixed-seed attacks reproduce the reconstructions recorded before the replay was restructured (to 1e-6).

``tests/attacks/data/fixed_seed_reference.npz`` holds the reconstructions (images, objective per trial) of three
small fixed-seed attacks, written by ``python tests/attacks/test_fixed_seed_reference.py --write`` on top of
commit 2b8f961, before the replay was split into parts: ``inverting-gradients`` (two one-image victims attacked
together, two restarts), ``fedavg-inversion`` (a BatchNorm network, three local steps of batch 2) and ``cdia``
(dropout, DP-SGD and CVB: optimised masks and ε, DP noise at its mean). A change to the replay that changes
what an attack computes fails here; rewrite the file only for a deliberate change of results, and say so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.attacks import CDIA, FedAvgInversion, InvertingGradients
from gradleak.audit import simulate_and_attack
from gradleak.fl import LocalRecipe
from gradleak.models import create_model

if __package__ in (None, ""):  # run as a script (--write)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.attacks._helpers import client_view, mnist, tiny_bn_net

REFERENCE = Path(__file__).resolve().parent / "data" / "fixed_seed_reference.npz"


def _ig() -> list:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    x, y, mean, std = mnist(2, offset=3)
    attack = InvertingGradients(iterations=25, restarts=2, tv=1e-2, compile=False)
    result = simulate_and_attack(model, x, y, recipe="fedsgd", attack=attack, threat="informed", victims="each",
                                 mean=mean, std=std, generator=torch.Generator().manual_seed(11))
    return list(result.reconstructions)


def _fedavg() -> list:
    model = tiny_bn_net(seed=2, classes=10)
    x, y, mean, std = mnist(4, offset=7)
    recipe = LocalRecipe(lr=0.05, steps=3, batch_size=2, shuffle=False)
    prior = x.mean(0)  # the attacker's prior: the mean image of the victims' data
    view = client_view(model, x, y, recipe, mean=mean, std=std, labels=True, prior=prior)
    attack = FedAvgInversion(iterations=25, compile=False)
    return attack.attack_many([view], generator=torch.Generator().manual_seed(12))


def _cdia() -> list:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1)
    x, y, mean, std = mnist(2, offset=1)
    attack = CDIA(iterations=25, tv=1e-2, compile=False)  # the weight the reference was recorded with
    result = simulate_and_attack(model, x, y, recipe="fedsgd", attack=attack, threat="informed", victims="each",
                                 defenses=["dropout", "dp-sgd", "cvb"], mean=mean, std=std,
                                 generator=torch.Generator().manual_seed(13))
    return list(result.reconstructions)


CASES = {"inverting-gradients": _ig, "fedavg-inversion": _fedavg, "cdia": _cdia}


def _arrays(name: str) -> dict[str, np.ndarray]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order
    try:
        reconstructions = CASES[name]()
    finally:
        torch.set_num_threads(threads)
    images = torch.stack([r.images for r in reconstructions]).numpy()
    objectives = np.array([[t.objective for t in r.trials] for r in reconstructions])
    return {f"{name}/images": images, f"{name}/objectives": objectives}


@pytest.mark.parametrize("name", list(CASES))
def test_fixed_seed_attack_reproduces_the_recorded_reconstruction(name: str) -> None:
    with np.load(REFERENCE, allow_pickle=False) as z:
        want = {k: z[k] for k in z.files if k.startswith(name + "/")}
    got = _arrays(name)
    assert set(got) == set(want)
    for key, value in got.items():
        assert value.shape == want[key].shape, key
        np.testing.assert_allclose(value, want[key], rtol=0, atol=1e-6, err_msg=key)
    assert float(np.abs(want[f"{name}/images"] - want[f"{name}/images"].mean()).max()) > 0.05  # not a blank


if __name__ == "__main__" and "--write" in sys.argv:
    REFERENCE.parent.mkdir(exist_ok=True)
    arrays = {k: v for name in CASES for k, v in _arrays(name).items()}
    np.savez_compressed(REFERENCE, **arrays)
    print(f"wrote {REFERENCE}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
