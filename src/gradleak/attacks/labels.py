"""Label strategies: known labels, analytic recovery from the last layer's update, or joint soft labels.

All analytic methods read the classifier's update. For cross-entropy, the gradient of the last linear layer
is ``dL/dW_ij = mean_k (p_ik - y_ik) h_kj``; with non-negative features ``h`` (after ReLU, sigmoid or an
average pool of either) the rows of the classes present in the batch are pushed negative. An update
``delta = -lr * (sum of gradients)`` has the opposite sign, which is all these methods need (they are
invariant to a positive scale, so the learning rate need not be known).

- ``"known"`` — the view's labels (a threat model that grants them).
- ``"idlg"`` — Zhao et al. 2020 (iDLG), one image: the row of the weight gradient whose sum is negative. When
  the classifier's bias is sent, its gradient ``p - y`` is read instead: negative at the label alone, for any
  features (the weight rule needs non-negative ones, and fails behind a PRECODE bottleneck's linear decoder).
- ``"yin"`` — Yin et al. 2021 (GradInversion), a batch of distinct labels: the ``n`` classes whose row
  minimum is most negative.
- ``"wainakh"`` — Wainakh et al. 2022 (LLG, "User-Level Label Leakage from Gradients"), batches with
  repeated labels: every class with a negative row sum once, then repeatedly the most negative row after
  removing one example's estimated impact ``m = (sum of the negative row sums) / n * (1 + 1/K)`` (LLG, the
  simple variant that needs no auxiliary data).
- ``"wainakh-calibrated"`` — the same greedy counting with the impact and the per-class offsets (the
  model's bias towards some classes) calibrated by training steps on random dummy images (LLG+'s
  calibration, with dummy instead of auxiliary data); much better on untrained models.
- ``"auto"`` — known labels if granted, else ``idlg`` for one image, else ``wainakh-calibrated``.
- ``"joint"`` — no labels: the attack optimises soft labels with the images (Zhu et al. 2019, DLG).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import vmap

from gradleak.attacks.base import AttackError
from gradleak.data.transforms import normalize
from gradleak.fl.local import LocalData, local_update
from gradleak.fl.recipe import LocalRecipe
from gradleak.records import ServerView

__all__ = ["LABEL_STRATEGIES", "calibrated_wainakh_labels", "classifier_bias_gradient", "classifier_gradient",
           "idlg_label", "infer_labels", "wainakh_labels", "yin_labels"]


def classifier_gradient(view: ServerView, model: nn.Module | None = None) -> Tensor:
    """``(num_classes, features)`` gradient direction of the last linear layer: minus its update."""
    model = model if model is not None else view.build_model()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise AttackError("analytic label recovery needs a final nn.Linear classifier; use labels='joint'")
    key = f"{linears[-1]}.weight"
    delta = view.update.delta
    if key not in delta:
        raise AttackError(f"the update withholds the classifier ({key}); use labels='joint' or 'known'")
    return -delta[key].detach().to(torch.float64)


def idlg_label(grad: Tensor) -> Tensor:
    """Zhao et al. 2020: the class whose weight-gradient row sums most negative, shape ``(1,)``."""
    return grad.sum(1).argmin().reshape(1)


def yin_labels(grad: Tensor, n: int) -> Tensor:
    """Yin et al. 2021: the ``n`` classes with the most negative row minimum (distinct labels)."""
    if n > grad.shape[0]:
        raise AttackError(f"Yin et al.'s recovery returns distinct labels: {n} > {grad.shape[0]} classes; "
                          "use labels='wainakh'")
    return torch.argsort(grad.min(1).values)[:n].sort().values


def wainakh_labels(grad: Tensor, n: int) -> Tensor:
    """Wainakh et al. 2022 (LLG): counts per class from the row sums, repeated labels allowed."""
    sums = grad.sum(1).clone()
    negative = torch.nonzero(sums < 0).flatten()
    if negative.numel() == 0:
        raise AttackError("no class has a negative classifier gradient; LLG cannot start (trained model?)")
    impact = sums[negative].sum() / n * (1 + 1 / grad.shape[0])  # one example's share, as LLG's code
    negative = negative[torch.argsort(sums[negative])][:n]
    labels = negative.tolist()
    sums[negative] -= impact
    while len(labels) < n:
        j = int(sums.argmin())
        labels.append(j)
        sums[j] -= impact
    return torch.tensor(sorted(labels), dtype=torch.long)


def calibrated_wainakh_labels(view: ServerView, n: int, *, repeats: int = 4,
                              generator: torch.Generator | None = None) -> Tensor:
    """Wainakh et al. 2022 with the impact and per-class offsets calibrated on random dummy data (their
    LLG+ calibration with dummy inputs instead of auxiliary data).

    For every class ``i`` the global model is trained one step (the client's BatchNorm mode, lr 1) on ``n``
    uniform-noise images all labelled ``i``: the row sum of ``i`` estimates one example's impact, the other
    rows estimate the offsets ``sum_k p_jk |h_k|`` of absent classes. The observed row sums (divided by the
    recipe's learning rate) minus the offsets are then assigned greedily, ``impact`` per example.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    model = view.build_model()
    params, buffers = view.global_state.params, view.global_state.buffers
    recipe = view.recipe if isinstance(view.recipe, LocalRecipe) else LocalRecipe(lr=1.0)
    grad = classifier_gradient(view, model) / recipe.lr
    key = f"{[k for k, m in model.named_modules() if isinstance(m, nn.Linear)][-1]}.weight"
    k_classes = grad.shape[0]
    probe = LocalRecipe(lr=1.0, steps=1, batch_size=n, shuffle=False, bn_mode=recipe.bn_mode)
    impact, offset = 0.0, torch.zeros(k_classes, dtype=torch.float64)
    targets = torch.arange(k_classes).unsqueeze(1).expand(k_classes, n)
    absent = 1.0 - torch.eye(k_classes, dtype=torch.float64)

    def row_sums(x: Tensor, y: Tensor) -> Tensor:
        out = local_update(model, params, buffers, LocalData(x, y), probe)
        return -(out.params[key] - params[key]).sum(1)

    for _ in range(repeats):
        x = normalize(torch.rand(n, *view.image_shape, generator=generator), view.mean, view.std)
        sums = vmap(row_sums, in_dims=(None, 0))(x, targets).detach().to(torch.float64)  # (class trained, row)
        impact += float(sums.diagonal().sum()) / n
        offset += (sums * absent).sum(0)
    impact = impact / (repeats * k_classes) * (1 + 1 / k_classes)
    sums = grad.sum(1) - offset / (repeats * (k_classes - 1))
    labels = []
    for _ in range(n):
        j = int(sums.argmin())
        labels.append(j)
        sums[j] -= impact
    return torch.tensor(sorted(labels), dtype=torch.long)


def _known(view: ServerView, n: int) -> Tensor:
    if view.labels is None:
        raise AttackError("labels='known' but the threat model does not grant the labels")
    labels = view.labels.detach().long().flatten()
    if labels.numel() != n:
        raise AttackError(f"the view grants {labels.numel()} labels for {n} dummy images")
    return labels


def classifier_bias_gradient(view: ServerView, model: nn.Module | None = None) -> Tensor | None:
    """``(num_classes,)`` gradient direction of the last linear layer's bias (minus its update), or ``None``
    when the classifier has no bias or the update withholds it."""
    model = model if model is not None else view.build_model()
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].bias is None:
        return None
    key = f"{linears[-1][0]}.bias"
    delta = view.update.delta
    return -delta[key].detach().to(torch.float64) if key in delta else None


def _idlg(view: ServerView, n: int) -> Tensor:
    if n != 1:
        raise AttackError(f"iDLG recovers the label of one image, not {n}; use labels='yin' or 'wainakh'")
    model = view.build_model()
    bias = classifier_bias_gradient(view, model)
    if bias is not None:  # p - y: negative at the label only, whatever the features' signs
        return bias.argmin().reshape(1)
    return idlg_label(classifier_gradient(view, model))


def _auto(view: ServerView, n: int) -> Tensor:
    if view.labels is not None:
        return _known(view, n)
    return _idlg(view, n) if n == 1 else calibrated_wainakh_labels(view, n)


#: Label strategies by name: ``(view, n) -> (n,) labels``, or ``None`` for joint optimisation.
LABEL_STRATEGIES: dict[str, Callable[[ServerView, int], Tensor | None]] = {
    "known": _known,
    "idlg": _idlg,
    "yin": lambda view, n: yin_labels(classifier_gradient(view), n),
    "wainakh": lambda view, n: wainakh_labels(classifier_gradient(view), n),
    "wainakh-calibrated": calibrated_wainakh_labels,
    "auto": _auto,
    "joint": lambda view, n: None,
}


def infer_labels(strategy: str, view: ServerView, n: int) -> Tensor | None:
    """Hard labels ``(n,)`` by ``strategy``, or ``None`` when the attack optimises soft labels."""
    try:
        fn = LABEL_STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown label strategy {strategy!r}; use one of {sorted(LABEL_STRATEGIES)}") from None
    return fn(view, n)
