"""Gradient-inversion and malicious-server attacks; each registered by name in :data:`ATTACKS`."""

from gradleak.attacks.analytic import AnalyticLinear, invert_linear
from gradleak.attacks.base import ATTACKS, Attack, AttackError
from gradleak.attacks.dlg import DLG, IDLG
from gradleak.attacks.fedavg_inversion import FedAvgInversion
from gradleak.attacks.gradinversion import GradInversion
from gradleak.attacks.imprint import (
    ImprintAttack,
    ImprintBlock,
    ImprintSecrets,
    expected_recovery,
    insert_imprint,
    linearize_resnet,
    one_shot_success,
    reference_features,
    simulate_recovery,
)
from gradleak.attacks.inspect import InspectionReport, inspect_model
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.targeted import CDIA, DIA, DPIA, GPIA, PIG, VBIA, WIIG, TargetedAttack

__all__ = [
    "ATTACKS",
    "CDIA",
    "DIA",
    "DLG",
    "DPIA",
    "GPIA",
    "IDLG",
    "PIG",
    "VBIA",
    "WIIG",
    "AnalyticLinear",
    "Attack",
    "AttackError",
    "FedAvgInversion",
    "GradInversion",
    "ImprintAttack",
    "ImprintBlock",
    "ImprintSecrets",
    "InspectionReport",
    "InvertingGradients",
    "TargetedAttack",
    "expected_recovery",
    "insert_imprint",
    "inspect_model",
    "invert_linear",
    "linearize_resnet",
    "one_shot_success",
    "reference_features",
    "simulate_recovery",
]
