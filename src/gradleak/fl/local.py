"""``local_update``: the client's local training, written once for the simulator and the attacker.

The function is pure: parameters and buffers go in as dicts, new ones come out; the module only supplies
the architecture (through :func:`torch.func.functional_call`). It is differentiable with respect to the
input images, soft labels and injected noise when ``create_graph=True``, and it composes with
:func:`torch.func.vmap` (independent trials or victims in one call), because

- gradients come from :func:`torch.func.grad` whenever a transform is active (``torch.autograd.grad`` only
  when none is, where both give the same numbers);
- BatchNorm and dropout modules are given functional forwards for the call (or once for good, on an
  attacker's private copy: :func:`bind_functional`): BatchNorm normalises with the
  batch's biased statistics and *returns* them, and the new running statistics are computed out of place
  with PyTorch's exact rule (momentum, unbiased variance, cumulative average when ``momentum=None``,
  ``num_batches_tracked + 1``); dropout draws its mask from :mod:`gradleak.fl.noise`;
- optimiser state (momentum buffers, Adam moments) is a dict of tensors updated out of place.

A BatchNorm module called more than once per forward is not supported (its last call's statistics win).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from gradleak.fl import noise as noise_mod
from gradleak.fl.functional import StatCollector, bind_functional, functional_modules, running_update
from gradleak.fl.recipe import LocalRecipe, batch_schedule

__all__ = ["LocalData", "LocalResult", "StepRecord", "bind_functional", "local_update", "model_state"]

TensorDict = dict[str, Tensor]
_ADAM_SQRT_FLOOR = 1e-30  # keeps d sqrt(v)/dv finite at v = 0 for double backward; changes no value > 1e-15


@dataclass(frozen=True)
class LocalData:
    """A client's local examples: images ``x`` (N, C, H, W), normalised as the model expects, and labels
    ``y`` — class indices ``(N,)`` or probability vectors ``(N, K)`` (an attacker's soft labels)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class StepRecord:
    """What happened at one local step: loss, learning rate, batch size, and per BatchNorm layer the batch
    mean and biased variance it normalised with."""

    loss: Tensor
    lr: float
    batch_size: int
    bn_stats: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    #: the (transformed) gradient the optimiser stepped with; kept only under ``create_graph`` (the attacker's
    #: one-step SGD replay matches it directly instead of ``(p - lr g - p) / lr``)
    grads: TensorDict | None = None


@dataclass(frozen=True)
class LocalResult:
    """Parameters and buffers after local training, per-step records, and the noise the modules used."""

    params: TensorDict
    buffers: TensorDict
    per_step: list[StepRecord]
    noise: TensorDict

    def delta(self, params_before: Mapping[str, Tensor]) -> TensorDict:
        """``params_after - params_before``: the update a client sends."""
        return {k: v - params_before[k] for k, v in self.params.items()}


def model_state(model: nn.Module) -> tuple[TensorDict, TensorDict]:
    """Detached copies of a module's parameters and buffers, keyed as ``named_parameters``/``named_buffers``."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return params, buffers


def _optimizer_step(
    recipe: LocalRecipe, params: TensorDict, grads: TensorDict, state: TensorDict, lr: float, t: int
) -> tuple[TensorDict, TensorDict]:
    """One step of ``torch.optim.SGD``/``Adam`` written out of place (same arithmetic order)."""
    new_params: TensorDict = {}
    new_state: TensorDict = {}
    wd = recipe.weight_decay
    for k, p in params.items():
        g = grads[k]
        if wd:
            g = g + wd * p
        if recipe.optimizer == "sgd":
            if recipe.momentum:
                buf = g if t == 0 else recipe.momentum * state[k] + g
                new_state[k] = buf
                g = g + recipe.momentum * buf if recipe.nesterov else buf
            new_params[k] = p - lr * g
        else:
            b1, b2 = recipe.betas
            m = b1 * state[f"{k}/m"] + (1 - b1) * g if t else (1 - b1) * g
            v = b2 * state[f"{k}/v"] + (1 - b2) * g * g if t else (1 - b2) * g * g
            new_state[f"{k}/m"], new_state[f"{k}/v"] = m, v
            bc1 = 1 - b1 ** (t + 1)
            bc2_sqrt = math.sqrt(1 - b2 ** (t + 1))
            denom = v.clamp_min(_ADAM_SQRT_FLOOR).sqrt() / bc2_sqrt + recipe.eps
            new_params[k] = p - (lr / bc1) * (m / denom)
    return new_params, new_state


def _reduce_transforms(recipe: LocalRecipe) -> tuple[list, list]:
    per_sample = [t for t in recipe.step_transforms if getattr(t, "per_sample", False)]
    batch = [t for t in recipe.step_transforms if not getattr(t, "per_sample", False)]
    if len(per_sample) > 1:
        raise ValueError("at most one per-sample step transform (it reduces per-example gradients)")
    if per_sample and recipe.step_transforms[0] is not per_sample[0]:
        raise ValueError("a per-sample step transform must come first in step_transforms")
    return per_sample, batch


def local_update(
    model: nn.Module,
    params: Mapping[str, Tensor] | None,
    buffers: Mapping[str, Tensor] | None,
    batches: LocalData | Sequence[tuple[Tensor, Tensor]],
    recipe: LocalRecipe,
    *,
    noise: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    gradient_only: bool = False,
) -> LocalResult:
    """Run the client's local training functionally.

    Parameters
    ----------
    model
        The architecture; its own parameters are not used or changed (pass ``params``/``buffers``; ``None``
        takes copies of the module's current state).
    params, buffers
        State at the start of local training (the round's global model).
    batches
        Either the client's :class:`LocalData`, cut into steps by :func:`batch_schedule` from the recipe, or
        an explicit sequence of ``(x, y)`` batches, one per step.
    recipe
        Optimiser, schedule, BatchNorm mode, loss and step transforms.
    noise
        Injected randomness by key (see :mod:`gradleak.fl.noise`); what is not injected is sampled from
        ``generator``.
    create_graph
        Keep the graph through every step, so the result can be differentiated with respect to the data,
        soft labels and injected noise (the attacker's replay). Off: plain training, nothing retained.
    gradient_only
        One step only: compute the step's (transformed) gradient and buffers but not the optimizer step, so
        ``params`` are returned unchanged; with ``create_graph`` the gradient is in ``per_step[0].grads``.
        For an attacker that matches a one-step SGD update through its gradient (the step itself would be
        computed and discarded on every iteration).

    Returns
    -------
    LocalResult
        New parameters and buffers, per-step records and the noise used.

    Examples
    --------
    >>> params, buffers = model_state(model)                       # doctest: +SKIP
    >>> out = local_update(model, params, buffers, LocalData(x, y), LocalRecipe(lr=0.01))  # doctest: +SKIP
    >>> update = out.delta(params)                                  # doctest: +SKIP
    """
    if params is None or buffers is None:
        own_params, own_buffers = model_state(model)
        params = own_params if params is None else params
        buffers = own_buffers if buffers is None else buffers
    params, buffers = dict(params), dict(buffers)
    if not create_graph:
        params = {k: v.detach() for k, v in params.items()}
        buffers = {k: v.detach() for k, v in buffers.items()}

    if isinstance(batches, LocalData):
        data = batches if create_graph else LocalData(batches.x.detach(), batches.y.detach())
        # an unshuffled batch of every example is the data itself (no gather copy; the attacker's FedSGD replay)
        steps = [(data.x, data.y) if not recipe.shuffle and len(idx) == len(data) else (data.x[idx], data.y[idx])
                 for idx in batch_schedule(len(data), recipe)]
    else:
        steps = [(x, y) if create_graph else (x.detach(), y.detach()) for x, y in batches]
    if not steps:
        raise ValueError("local training needs at least one batch")
    if gradient_only and len(steps) != 1:
        raise ValueError(f"gradient_only needs a one-step replay, got {len(steps)} steps")

    per_sample_tf, batch_tf = _reduce_transforms(recipe)
    named = list(model.named_modules())  # walked once per call (the attacker calls this every iteration)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for _, m in named)
    if per_sample_tf and has_bn and recipe.bn_mode == "train":
        raise ValueError("per-sample gradient transforms (DP-SGD) need bn_mode='eval' or a model without "
                         "BatchNorm (use norm='group'); per-example gradients are undefined under batch statistics")

    sink = StatCollector()

    def loss_fn(p: TensorDict, b: TensorDict, xb: Tensor, yb: Tensor):
        sink.clear()
        ctx.losses.clear()
        logits = functional_call(model, (p, b), (xb,))
        loss = F.cross_entropy(logits, yb)
        for extra in ctx.losses:  # e.g. a variational bottleneck's KL term
            loss = loss + extra
        stats = {k: (mean, var) for k, (mean, var, _) in sink.items()}
        return loss, (loss, stats)

    ctx = noise_mod.NoiseContext(noise, generator)

    def per_example_loss(p: TensorDict, b: TensorDict, xi: Tensor, yi: Tensor, noise_i: TensorDict) -> Tensor:
        # example i uses row i of the noise (dropout masks, VB epsilon) the batch forward drew for this step
        ctx.losses.clear()
        ctx.override = {k: v.unsqueeze(0) for k, v in noise_i.items()}
        try:
            loss = F.cross_entropy(functional_call(model, (p, b), (xi.unsqueeze(0),)), yi.unsqueeze(0))
            for extra in ctx.losses:
                loss = loss + extra
        finally:
            ctx.override = {}
        return loss
    opt_state: TensorDict = {}
    records: list[StepRecord] = []
    # training mode for the call (dropout-like layers the patching below leaves alone), restored afterwards;
    # nothing is set when every module is already training (model.train() walks and sets every module)
    modes = [(m, m.training) for _, m in named]
    switched = not all(mode for _, mode in modes)
    if switched:
        model.train()
    try:
        with functional_modules(named, recipe.bn_mode, sink, create_graph), noise_mod.noise_context(ctx):
            for t, (xb, yb) in enumerate(steps):
                ctx.step = t
                if per_sample_tf:  # the batch forward draws the step's noise; its gradient would be discarded
                    _, (loss, stats) = loss_fn(params, buffers, xb, yb)
                else:
                    grads, (loss, stats) = _batch_gradient(loss_fn, params, buffers, xb, yb, create_graph)
                counts = {k: n for k, (_, _, n) in sink.items()}  # static ints stay out of the transform
                if per_sample_tf:
                    step_noise = {k: v for k, v in ctx.drawn.items() if k.endswith(f"@{t}")}
                    per_ex = vmap(grad(per_example_loss), in_dims=(None, None, 0, 0, 0))(
                        params, buffers, xb, yb, step_noise)
                    grads = per_sample_tf[0](per_ex, step=t, batch_size=int(xb.shape[0]))
                for transform in batch_tf:
                    grads = transform(grads, step=t, batch_size=int(xb.shape[0]))
                lr = recipe.lr_at(t, len(steps))
                if not gradient_only:
                    params, opt_state = _optimizer_step(recipe, params, grads, opt_state, lr, t)
                full_stats = {k: (*stats[k], counts[k]) for k in stats}
                if full_stats:
                    buffers = running_update(dict(named), buffers, full_stats)
                if not create_graph:
                    params = {k: v.detach() for k, v in params.items()}
                    buffers = {k: v.detach() for k, v in buffers.items()}
                    opt_state = {k: v.detach() for k, v in opt_state.items()}
                    stats = {k: (m.detach(), v.detach()) for k, (m, v) in stats.items()}
                    loss = loss.detach()
                records.append(StepRecord(loss=loss, lr=lr, batch_size=int(xb.shape[0]), bn_stats=stats,
                                          grads=grads if create_graph else None))
    finally:
        if switched:
            for m, mode in modes:
                m.training = mode
    return LocalResult(params=params, buffers=buffers, per_step=records,
                       noise={k: _escaped(v) for k, v in ctx.drawn.items()})


def _batch_gradient(loss_fn, params: TensorDict, buffers: TensorDict, xb: Tensor, yb: Tensor,
                    create_graph: bool) -> tuple[TensorDict, tuple]:
    """The batch gradient of ``loss_fn`` with respect to ``params``, and its auxiliary output.

    Under a :mod:`torch.func` transform (an attacker's vmapped trials) this is :func:`torch.func.grad`. With no
    transform active it is :func:`torch.autograd.grad`: the same backward kernels and the same numbers, without
    a wrapper layer around every tensor (a cheaper double backward for a single-trial attack).
    """
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return grad(loss_fn, has_aux=True)(params, buffers, xb, yb)
    leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        loss, aux = loss_fn(leaves, buffers, xb, yb)
        found = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, allow_unused=True,
                                    materialize_grads=True)
    return dict(zip(leaves, found, strict=True)), aux


def _escaped(t: Tensor) -> Tensor:
    """The plain tensor inside a wrapper that escaped a finished ``torch.func`` transform (noise sampled inside
    ``grad`` is wrapped at that level; once the transform has returned the wrapper is dead and only confuses
    printing and serialisation). Live tensors, and tensors that carry an attacker's graph, are returned as is."""
    if torch.compiler.is_compiling():  # traced tensors are never dead wrappers (and Dynamo cannot ask)
        return t
    while torch._C._functorch.is_functorch_wrapped_tensor(t) and torch._C._functorch.maybe_get_level(t) < 0:
        t = torch._C._functorch.get_unwrapped(t)
    return t
