"""Registries: a named registry sets each class's ``name`` to the name it is registered under."""

from __future__ import annotations

import pytest

from gradleak.attacks import ATTACKS
from gradleak.defenses import DEFENSES
from gradleak.registry import Registry


@pytest.mark.parametrize("registry", [ATTACKS, DEFENSES], ids=["attacks", "defenses"])
def test_every_registered_class_carries_its_registered_name(registry: Registry) -> None:
    assert registry.names()
    for name in registry.names():
        assert registry.get(name).name == name


def test_analytic_and_imprint_results_carry_their_registered_names() -> None:
    assert ATTACKS.create("analytic").name == "analytic"
    assert ATTACKS.create("imprint").name == "imprint"


def test_a_named_registry_sets_the_name_and_takes_only_classes() -> None:
    things: Registry[object] = Registry("thing", named=True)

    @things.register("my-thing")
    class Thing:
        name = ""

    assert Thing.name == "my-thing"
    with pytest.raises(TypeError, match="holds classes"):
        things.register("function")(lambda: None)
    plain: Registry[object] = Registry("plain")
    plain.register("f")(len)  # functions are fine where names are not set
    assert plain.get("f") is len
