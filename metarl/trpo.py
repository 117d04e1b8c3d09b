"""Trust-region policy optimisation pieces (Schulman et al. 2015), on lists of parameters:
conjugate gradient, Hessian-vector products of a KL, and a backtracking line search.

`trpo_step` solves H x = g for the natural gradient direction with CG, scales it to the KL
bound, then shrinks the step until the surrogate improves and the KL stays within bound.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


def conjugate_gradient(Avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given by A @ v."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def hvp_fn(kl: torch.Tensor, params: Sequence[torch.Tensor], damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (H + damping I) v with H the Hessian of `kl` w.r.t. params (graph kept for reuse)."""
    grads = torch.autograd.grad(kl, params, create_graph=True)
    g = flat(grads)

    def Hv(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(g @ v, params, retain_graph=True)
        return flat(hv) + damping * v
    return Hv


@torch.no_grad()
def _set(params: Sequence[torch.Tensor], vec: torch.Tensor) -> None:
    for p, v in zip(params, unflat(vec, params)):
        p.copy_(v)


def line_search(params: Sequence[torch.Tensor], closure: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                step: torch.Tensor, old_loss: float, max_kl: float, max_backtracks: int = 15,
                ratio: float = 0.8) -> tuple[bool, float, float, float]:
    """Try params + ratio^i * step for i = 0, 1, ...; keep the first that lowers the loss with
    KL <= max_kl, else restore params. Returns (accepted, fraction, loss, kl)."""
    old = flat([p.detach() for p in params]).clone()
    for i in range(max_backtracks):
        frac = ratio ** i
        _set(params, old + frac * step)
        with torch.no_grad():
            loss, kl = closure()
        loss, kl = float(loss), float(kl)
        if kl <= max_kl and loss < old_loss:
            return True, frac, loss, kl
    _set(params, old)
    return False, 0.0, old_loss, 0.0


def trpo_step(params: Sequence[torch.Tensor], closure: Callable[[], tuple[torch.Tensor, torch.Tensor]],
              max_kl: float = 0.01, cg_iters: int = 10, damping: float = 1e-5, max_backtracks: int = 15,
              ratio: float = 0.8, hvp_kl: Callable[[], torch.Tensor] | None = None) -> dict[str, float]:
    """One TRPO update of `params` in place.

    closure() -> (surrogate loss to minimise, mean KL(old || new)), both differentiable in
    params; at the current params the KL is 0. hvp_kl() -> the KL to take Hessian-vector
    products of (default: the closure's KL); pass a cheaper one, e.g. on a subset of the data.
    """
    params = list(params)
    loss, kl = closure()
    grads = torch.autograd.grad(loss, params, retain_graph=hvp_kl is None)
    g = flat(grads)
    Hv = hvp_fn(kl if hvp_kl is None else hvp_kl(), params, damping)
    direction = conjugate_gradient(Hv, -g, cg_iters)
    shs = 0.5 * (direction @ Hv(direction))
    if not torch.isfinite(shs) or shs <= 0:
        return {"accepted": 0.0, "step_fraction": 0.0, "surrogate_before": float(loss.detach()), "surrogate_after": float(loss.detach()),
                "kl": 0.0, "grad_norm": float(g.norm())}
    step = direction * torch.sqrt(2 * max_kl / shs)
    ok, frac, new_loss, new_kl = line_search(params, closure, step, float(loss.detach()), max_kl, max_backtracks, ratio)
    return {"accepted": float(ok), "step_fraction": frac, "surrogate_before": float(loss.detach()),
            "surrogate_after": new_loss, "kl": new_kl, "grad_norm": float(g.norm())}
