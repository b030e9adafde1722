"""The imprint attack of "Robbing the Fed" (Fowl, Geiping, Czaja, Goldblum, Goldstein, ICLR 2022).

A malicious server inserts an imprint module (:func:`~gradleak.attacks.imprint.module.insert_imprint`) whose rows
all measure one linear function ``h`` with biases at the quantiles of ``h``. In the update, the difference of
two successive rows of ``∇W`` divided by the difference of the bias gradients is the sum over the inputs whose
``h`` falls into that bin (Eq. 4): a bin hit by exactly one input yields it verbatim, with no optimisation, from
one client's update or from a securely aggregated sum of thousands. The sparse variant needs no difference (each
row only sees its own bin), which keeps it exact under FedAvg's several local steps.

Collisions (bins hit by several inputs) are detected and returned with ``Reconstruction.valid = False``: a
single input's ``h`` lies in its bin, its pixels lie in ``[0, 1]`` and, for 8-bit data (``grid=255``), on the
``k/255`` grid; a weighted mixture of several inputs fails these checks except when one input dominates it to
within a fraction of a grey level. Identical recoveries from several rows (bins drifting under FedAvg) are
kept once.

How many inputs to expect: :func:`expected_recovery` (``"iid"``: independent inputs, the measured quantity;
``"paper"``: Proposition 1 as printed) and :func:`one_shot_success`.

Example
-------
>>> model, secrets = insert_imprint(resnet, ImprintBlock(num_bins=128), (3, 32, 32), public=public)  # doctest: +SKIP
>>> view = ServerView(..., secrets=secrets)                                                # doctest: +SKIP
>>> reconstruction = ImprintAttack()(view)        # images in bin order, valid marks single inputs  # doctest: +SKIP

The package: :mod:`~gradleak.attacks.imprint.secrets` (what the server keeps),
:mod:`~gradleak.attacks.imprint.module` (building and inserting the module; :mod:`~gradleak.attacks.imprint.linearize`
for a deeper placement), :mod:`~gradleak.attacks.imprint.attack` (reading inputs out of the update),
:mod:`~gradleak.attacks.imprint.theory` (how many to expect).
"""

from gradleak.attacks.imprint.attack import ImprintAttack, recover_bins
from gradleak.attacks.imprint.linearize import linearize_resnet
from gradleak.attacks.imprint.module import (
    ImprintBlock,
    ImprintBottleneck,
    bin_edges,
    insert_imprint,
    measurement_vector,
)
from gradleak.attacks.imprint.secrets import BNStage, ImprintSecrets, Variant, reference_features
from gradleak.attacks.imprint.theory import expected_recovery, one_shot_success, simulate_recovery

__all__ = [
    "BNStage",
    "ImprintAttack",
    "ImprintBlock",
    "ImprintBottleneck",
    "ImprintSecrets",
    "Variant",
    "bin_edges",
    "expected_recovery",
    "insert_imprint",
    "linearize_resnet",
    "measurement_vector",
    "one_shot_success",
    "recover_bins",
    "reference_features",
    "simulate_recovery",
]
