"""A small hospital federation for the gate: ResNet-8 (BatchNorm, SiLU) on the bundled PneumoniaMNIST sample."""

from __future__ import annotations

import pytest
import torch

from gradleak.data import load_dataset
from gradleak.fl.presets import SCENARIOS
from gradleak.models import ModelSpec


@pytest.fixture(scope="session")
def hospital():
    """The demo's hospital federation (client 8 holds one X-ray, batch 1; client 1 holds 16, batch 4: four local
    steps), trained for 20 rounds."""
    scenario = SCENARIOS.create(
        "hospital", dataset="sample-pneumoniamnist", sizes=(8, 16, 32, 64, 8, 16, 32, 64, 1), val_per_client=0,
        val_split=None, rounds=20, image_size=32,
        model=ModelSpec("resnet8", {"num_classes": 2, "in_channels": 1, "image_size": 32, "width": 16,
                                    "activation": "silu"}))
    fed = scenario.build()
    sim = scenario.simulation(federation=fed)
    state = sim.run().final
    test = load_dataset("sample-pneumoniamnist", split="test")
    prior = test.tensors(list(range(64)), size=32)[0].mean(0)
    spec = scenario.input_spec(fed)
    return {"fed": fed, "sim": sim, "state": state, "prior": prior, "mean": spec.mean, "std": spec.std}


def client_case(h: dict, cid: int):
    """(model, state, update, images, labels, recipe) of client ``cid`` in the next round."""
    client = h["fed"].clients[cid]
    update = h["sim"].client_update(client, h["state"])
    return h["sim"].model, h["state"], update, h["fed"].client_images(cid), client.train.y, client.recipe


def check(gate, h: dict, cid: int):
    model, state, update, images, labels, recipe = client_case(h, cid)
    return gate.check(model, state, update, images, labels, recipe=recipe, prior=h["prior"], mean=h["mean"],
                      std=h["std"]), update


torch.set_num_threads(max(1, torch.get_num_threads()))
