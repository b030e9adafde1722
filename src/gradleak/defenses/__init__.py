"""Defenses by stage (model, step, update, aggregate), composable, registered by name in :data:`DEFENSES`."""

from gradleak.defenses.accounting import dp_epsilon, fl_dp_epsilon
from gradleak.defenses.aggregation import SecureAggregation, secure_sum
from gradleak.defenses.base import (
    DEFENSES,
    AggregateDefense,
    Defense,
    ModelDefense,
    Stages,
    StepDefense,
    UpdateDefense,
    by_stage,
    resolve_defenses,
)
from gradleak.defenses.modules import (
    CVB,
    PRECODE,
    ConvBottleneck,
    DropoutDefense,
    LinearBottleneck,
    VariationalBottleneck,
)
from gradleak.defenses.step import DPSGD, StepPrune
from gradleak.defenses.update import Laplace, LocalGaussian, PruneUpdate, WithholdBN, WithholdLayers

__all__ = [
    "CVB",
    "DEFENSES",
    "DPSGD",
    "PRECODE",
    "AggregateDefense",
    "ConvBottleneck",
    "Defense",
    "DropoutDefense",
    "Laplace",
    "LinearBottleneck",
    "LocalGaussian",
    "ModelDefense",
    "PruneUpdate",
    "SecureAggregation",
    "Stages",
    "StepDefense",
    "StepPrune",
    "UpdateDefense",
    "VariationalBottleneck",
    "WithholdBN",
    "WithholdLayers",
    "by_stage",
    "dp_epsilon",
    "fl_dp_epsilon",
    "resolve_defenses",
    "secure_sum",
]
