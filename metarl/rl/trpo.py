"""Trust-region policy optimisation pieces (Schulman et al. 2015), on lists of parameters:
conjugate gradient, Hessian-vector products of a KL, and a backtracking line search.

`trpo_step` solves H x = g for the natural gradient direction with CG, scales it to the KL
bound, then shrinks the step until the surrogate improves and the KL stays within bound.

Two ways to multiply by the KL's Hessian H at the current parameters:
- `kl_hvp`: double backward through the KL (any KL, the textbook way);
- `gauss_newton_hvp`: H = J^T F J with J = d out / d params (out: the policy's head outputs)
  and F the Hessian of the KL with respect to `out` alone. Exact where the KL sits at its
  minimum (new policy = old: d KL / d out = 0, so the second-derivative terms of `out` drop
  out), which is where TRPO takes it. Double backward would still compute those terms, which
  for MAML are third derivatives of the inner loss, multiplied by zero.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

HVP = Callable[[torch.Tensor], torch.Tensor]


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


def conjugate_gradient(Avp: HVP, b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve A x = b for symmetric positive-definite A given by A @ v.
    Returns (x, A x); A x = b - r comes from CG's own residual r, not one more product."""
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
    return x, b - r


def kl_hvp(kl: torch.Tensor, params: Sequence[torch.Tensor], damping: float) -> HVP:
    """v -> (H + damping I) v with H the Hessian of `kl` w.r.t. params, by double backward
    (graph kept for reuse)."""
    grads = torch.autograd.grad(kl, params, create_graph=True)
    g = flat(grads)

    def Hv(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(g @ v, params, retain_graph=True)
        return flat(hv) + damping * v
    return Hv


def gauss_newton_hvp(out: torch.Tensor, params: Sequence[torch.Tensor],
                     kl_of: Callable[[torch.Tensor], torch.Tensor], damping: float) -> HVP:
    """v -> (J^T F J + damping I) v, the Hessian of kl_of(out) w.r.t. params where the KL is at
    its minimum (see the module docstring). out [...]: differentiable in params, its graph kept
    for reuse; kl_of(o) -> the scalar KL of head outputs o (0 at o = out).

    J v comes from differentiating J^T u (built once, linear in a dummy u) w.r.t. u; F from
    double backward through kl_of alone, which is elementwise and cheap."""
    params = list(params)
    u = torch.zeros_like(out, requires_grad=True)
    jtu = torch.autograd.grad(out, params, u, create_graph=True)  # J^T u, linear in u
    o = out.detach().requires_grad_()
    with torch.enable_grad():
        dkl = torch.autograd.grad(kl_of(o), o, create_graph=True)[0]

    def Hv(v: torch.Tensor) -> torch.Tensor:
        jv = torch.autograd.grad(jtu, u, unflat(v, params), retain_graph=True)[0]
        fjv = torch.autograd.grad(dkl, o, jv, retain_graph=True)[0]
        return flat(torch.autograd.grad(out, params, fjv, retain_graph=True)) + damping * v
    return Hv


@torch.no_grad()
def _set(params: Sequence[torch.Tensor], vec: torch.Tensor) -> None:
    for p, v in zip(params, unflat(vec, params)):
        p.copy_(v)


Parts = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def line_search(params: Sequence[torch.Tensor], closure: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                step: torch.Tensor, old_loss: float, max_kl: float, max_backtracks: int = 15,
                ratio: float = 0.8, parts: Parts | None = None) -> tuple[bool, float, float, float, int]:
    """Try params + ratio^i * step for i = 0, 1, ...; keep the first that lowers the loss with
    KL <= max_kl, else restore params. Returns (accepted, fraction, loss, kl, trials).

    parts() (optional) yields the closure's (loss, KL) in pieces that sum to it, e.g. a few tasks
    each: a trial stops at the first piece that takes the KL sum over max_kl, since the KL terms
    are non-negative and the rest cannot bring it back. Same decisions, less work where the
    step is KL-bound."""
    old = flat([p.detach() for p in params]).clone()
    for i in range(max_backtracks):
        frac = ratio ** i
        _set(params, old + frac * step)
        with torch.no_grad():
            loss, kl = _evaluate(closure, parts, max_kl)
        if kl <= max_kl and loss < old_loss:
            return True, frac, loss, kl, i + 1
    _set(params, old)
    return False, 0.0, old_loss, 0.0, max_backtracks


def _evaluate(closure, parts: Parts | None, max_kl: float) -> tuple[float, float]:
    if parts is None:
        loss, kl = closure()
        return float(loss), float(kl)
    loss = kl = 0.0
    for l_part, kl_part in parts():
        loss, kl = loss + float(l_part), kl + float(kl_part)
        if kl > max_kl:
            break
    return loss, kl


def trpo_step(params: Sequence[torch.Tensor], closure: Callable[[], tuple[torch.Tensor, torch.Tensor]],
              max_kl: float = 0.01, cg_iters: int = 10, damping: float = 1e-5, max_backtracks: int = 15,
              ratio: float = 0.8, curvature: Callable[[], HVP] | None = None,
              keep_graph: bool = True, parts: Parts | None = None) -> dict[str, float]:
    """One TRPO update of `params` in place.

    closure() -> (surrogate loss to minimise, mean KL(old || new)), both differentiable in
    params; at the current params the KL is 0. curvature() -> the damped KL-Hessian-vector
    product at the current params, called right after the first closure() (so it may reuse
    that call's graph, kept unless keep_graph is False); default: `kl_hvp` of the closure's KL.
    parts: the closure in pieces, for the line search (see `line_search`).
    """
    params = list(params)
    loss, kl = closure()
    grads = torch.autograd.grad(loss, params, retain_graph=keep_graph or curvature is None)
    g = flat(grads)
    Hv = kl_hvp(kl, params, damping) if curvature is None else curvature()
    direction, h_dir = conjugate_gradient(Hv, -g, cg_iters)
    shs = 0.5 * (direction @ h_dir)
    if not torch.isfinite(shs) or shs <= 0:
        return {"accepted": 0.0, "step_fraction": 0.0, "surrogate_before": float(loss.detach()),
                "surrogate_after": float(loss.detach()), "kl": 0.0, "grad_norm": float(g.norm()), "ls_trials": 0}
    step = direction * torch.sqrt(2 * max_kl / shs)
    ok, frac, new_loss, new_kl, trials = line_search(params, closure, step, float(loss.detach()), max_kl,
                                                     max_backtracks, ratio, parts)
    return {"accepted": float(ok), "step_fraction": frac, "surrogate_before": float(loss.detach()),
            "surrogate_after": new_loss, "kl": new_kl, "grad_norm": float(g.norm()), "ls_trials": trials}
