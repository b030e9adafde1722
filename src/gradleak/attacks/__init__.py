"""Gradient-inversion and malicious-server attacks; each registered by name in :data:`ATTACKS`."""

from gradleak.attacks.analytic import AnalyticLinear, invert_linear
from gradleak.attacks.base import ATTACKS, Attack, AttackError
from gradleak.attacks.dlg import DLG, IDLG
from gradleak.attacks.fedavg_inversion import FedAvgInversion
from gradleak.attacks.gradinversion import GradInversion
from gradleak.attacks.imprint import (
    ImprintAttack,
    ImprintSecrets,
    expected_recovery,
    one_shot_success,
    reference_features,
    simulate_recovery,
)
from gradleak.attacks.imprint_model import ImprintBlock, insert_imprint, linearize_resnet
from gradleak.attacks.inspect import InspectionReport, inspect_model
from gradleak.attacks.inverting_gradients import InvertingGradients

__all__ = [
    "ATTACKS",
    "DLG",
    "IDLG",
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
    "expected_recovery",
    "insert_imprint",
    "inspect_model",
    "invert_linear",
    "linearize_resnet",
    "one_shot_success",
    "reference_features",
    "simulate_recovery",
]
