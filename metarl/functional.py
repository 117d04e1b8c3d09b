"""The functional inner loop of the MAML family, on torch.func.

Parameters are plain dicts {name: tensor}. A task's loss is a pure function
`loss_fn(params, data) -> scalar`, where `data` is any pytree of tensors for ONE task.
`adapt` runs gradient steps for one task; `adapt_batch` vmaps it over a meta-batch whose
data tensors carry a leading task dimension [N, ...], so the whole meta-batch adapts in one
batched computation. Both are differentiable with respect to the meta-parameters (and to
learned step sizes), so an outer loss on the adapted parameters backpropagates through the
inner steps: second order by default, first order (gradients treated as constants) on request.

The same code serves supervised regression / classification and policy-gradient RL.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]
StepSize = Union[float, Params]  # one scalar, or one step-size tensor per parameter (Meta-SGD)


def params_of(module: nn.Module) -> Params:
    """The module's parameters as a dict (the same tensors: gradients reach the module)."""
    return dict(module.named_parameters())


def as_loss(module: nn.Module, loss: Callable[[Any, Any], torch.Tensor]) -> Callable[[Params, Any], torch.Tensor]:
    """Turn `loss(module(x), y)` into `loss_fn(params, (x, y))` for the inner loop."""
    def loss_fn(params: Params, data) -> torch.Tensor:
        x, y = data
        return loss(functional_call(module, params, (x,)), y)
    return loss_fn


def meta_sgd_step_sizes(params: Params, init: float) -> nn.ParameterDict:
    """Learnable per-parameter step sizes (Li et al. 2017), one tensor shaped like each parameter.
    Names have '.' replaced by '/' (ParameterDict keys may not contain dots)."""
    return nn.ParameterDict({k.replace(".", "/"): nn.Parameter(torch.full_like(p, init)) for k, p in params.items()})


def _step_size(lr: StepSize | nn.ParameterDict, name: str):
    if isinstance(lr, (float, int)):
        return lr
    return lr[name.replace(".", "/")] if isinstance(lr, nn.ParameterDict) else lr[name]


def adapt(loss_fn: Callable[[Params, Any], torch.Tensor], params: Params, data, steps: int = 1,
          lr: StepSize | nn.ParameterDict = 0.1, first_order: bool = False) -> Params:
    """`steps` gradient steps on loss_fn(., data) from `params`, for one task.

    theta_{i+1} = theta_i - lr * grad loss(theta_i). With first_order the gradients are
    detached (FOMAML): the result still depends on `params` through theta_0, but no second
    derivatives are taken.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    g_fn = grad(loss_fn)
    for _ in range(steps):
        grads = g_fn(params, data)
        params = {k: p - _step_size(lr, k) * (grads[k].detach() if first_order else grads[k])
                  for k, p in params.items()}
    return params


def adapt_batch(loss_fn: Callable[[Params, Any], torch.Tensor], params: Params, data, steps: int = 1,
                lr: StepSize | nn.ParameterDict = 0.1, first_order: bool = False) -> Params:
    """`adapt` for a meta-batch at once: every tensor in `data` is [N, ...] (one slice per task);
    returns adapted params with a leading task dimension, {name: [N, *shape]}."""
    def one(d):
        return adapt(loss_fn, params, d, steps, lr, first_order)
    return vmap(one)(data)


def loss_batch(loss_fn: Callable[[Params, Any], torch.Tensor], params_batch: Params, data) -> torch.Tensor:
    """Per-task losses [N] of per-task params {name: [N, ...]} on per-task data [N, ...]."""
    return vmap(loss_fn)(params_batch, data)
