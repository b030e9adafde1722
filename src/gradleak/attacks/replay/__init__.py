"""The optimisation attack assembled from parts: replay the client's training on dummy data, match the update.

:class:`ReplayAttack` is the configurable base of ``dlg``, ``idlg``, ``inverting-gradients``, ``gradinversion``
and ``fedavg-inversion``; each of those only changes defaults. One iteration computes, for every trial,

    delta' = local_update(model, global params, global buffers, dummy batch, view.recipe, create_graph=True)
    loss   = objective(delta' / lr, delta / lr)            squared L2, L2 norm, cosine, layer-wise cosine
           + tv * TV(x) + l2 * |x|^2                       image priors
           + bn_prior * BN(batch stats of x, global running stats)   (Yin et al. 2021)
           + bn_buffers * BN(replayed buffers, received buffers)     (Hatamizadeh et al. 2023)
           + group * |x - mean over restarts|^2            (Yin et al. 2021)

and :func:`~gradleak.attacks.optimize.minimize` takes one step on the dummy images (and soft labels). The
replay *is* the client's training code, so FedSGD, several local steps over several batches, BatchNorm in
training mode with its running statistics, SGD or Adam are all reproduced exactly. Restarts and victims are
one computation: ``torch.func.vmap`` over victims (each with its own update, and its own global state when
the views differ) of ``vmap`` over restarts.

Targeted attacks (:mod:`gradleak.attacks.targeted`) change the replay through :meth:`ReplayAttack.targeting`,
which returns a :class:`Targeting`: noise handed to the replay per victim (a well-informed attacker's), noise
*optimised* with the images ("noise leaves": per-trial tensors injected into ``local_update(noise=...)`` by
key, vmapped like the images, e.g. dropout masks or a bottleneck's epsilon), their regulariser and projection,
per-parameter masks on the dummy update (a pruning mask), parameters left out of the objective, and the
recipe to replay. Stochastic layers whose noise is neither handed in nor optimised draw fresh noise in every
trial and iteration (``vmap(..., randomness="different")``), as an attacker that does not know it would.

The package: :mod:`~gradleak.attacks.replay.attack` (the attack's options and run),
:mod:`~gradleak.attacks.replay.problem` (one trial's objective as a pure function of (trial, victim), the victim
pytree, the objective's parts, the vectorisation over victims and restarts),
:mod:`~gradleak.attacks.replay.build` (the problem of a list of views, and the reconstructions of a result),
:mod:`~gradleak.attacks.replay.targeting` (what a targeted attack changes); the compiled iteration is in
:mod:`gradleak.attacks.compiling`.
"""

from gradleak.attacks.replay.attack import TV_CANDIDATES, ReplayAttack, split_generators
from gradleak.attacks.replay.problem import Problem
from gradleak.attacks.replay.targeting import LEAF, Targeting, merge_targetings

__all__ = ["LEAF", "TV_CANDIDATES", "Problem", "ReplayAttack", "Targeting", "merge_targetings", "split_generators"]
