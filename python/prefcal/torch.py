"""PyTorch integration (optional extra ``prefcal[torch]``): the PL negative log-likelihood as a loss.

:func:`pl_nll` is the ListMLE loss with prefcal's fused kernels in both directions: the forward pass
computes the log-likelihood and its gradient in one pass (C++ on CPU tensors, CUDA on CUDA tensors, without
copies), and the backward pass only scales the saved gradient. It is differentiable once: second derivatives
(Hessians, gradient penalties through ``create_graph=True``) raise an error; use a torch formulation for
those.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _validation, pl

__all__ = ["pl_nll", "PLNegLogLikelihood"]


class PLNegLogLikelihood(torch.autograd.Function):
    """autograd Function: -log P(rankings | scores), per row (reduction in :func:`pl_nll`)."""

    @staticmethod
    def forward(
        ctx: Any, scores: torch.Tensor, rankings: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        ll, grad = pl.log_likelihood_grad(scores.detach(), rankings, mask=mask)
        ctx.save_for_backward(grad)
        # only to tie a second derivative to the scores' graph (never read): kept on ctx, not saved, so that
        # changing the scores in place before backward() stays allowed, as the gradient does not use them
        ctx.scores = scores
        return -ll

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        out = -grad * grad_output.unsqueeze(-1).to(grad.dtype)  # differentiable in grad_output (exact)
        if torch.is_grad_enabled():  # create_graph: the saved gradient has no graph, so its derivative in the
            out = out + _no_second_derivative(ctx.scores)  # scores must be an error, not a silent zero
        return out, None, None


_SECOND = (
    b"prefcal.torch.pl_nll is differentiable once: its gradient comes from a fused kernel without a graph, "
    b"so second derivatives (Hessians, gradient penalties) are not available; use a torch formulation"
)


def _no_second_derivative(scores: torch.Tensor) -> torch.Tensor:
    """A zero tied to `scores` by a node that raises when autograd goes through it (the sum of no elements:
    exactly 0 whatever the scores hold)."""
    delayed = getattr(getattr(torch._C, "_functions", None), "DelayedError", None)
    if delayed is None:  # pragma: no cover - every torch this package supports has it
        raise RuntimeError(_SECOND.decode())
    return delayed(_SECOND, 1)(scores[..., :0].sum())


def pl_nll(
    scores: torch.Tensor, rankings: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Negative PL log-likelihood of ``rankings`` under ``scores`` (the ListMLE loss), differentiable.

    Parameters
    ----------
    scores : Tensor (N, n) or (n,), float32 or float64, CPU or CUDA
    rankings : integer Tensor (N, m) with -1 padding, on the same device
    mask : bool Tensor (N, n) or (n,), optional
    reduction : {"none", "sum", "mean"}, default "mean"

    Examples
    --------
    >>> import torch, prefcal.torch
    >>> s = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    >>> loss = prefcal.torch.pl_nll(s, torch.tensor([[0, 1, 2]]))
    >>> loss.backward()
    >>> round(loss.item(), 6), s.grad.round(decimals=4).tolist()  # log 6; d/ds of -log P
    (1.791759, [[-0.6667, -0.1667, 0.8333]])
    """
    reduction = _validation.option("reduction", reduction, pl.REDUCTIONS)
    for name, x in (("scores", scores), ("rankings", rankings), ("mask", mask)):
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (a loss for autograd), got {type(x).__name__}")
    if scores.dim() == 1:  # one global model: per-row gradients are needed to weight the rows
        # its n values, named as the 1-D tensor they are (not as a row of the spread copy)
        pl._check_global_scores(scores.detach().to("cpu", torch.float64).numpy())
        scores = scores.unsqueeze(0).expand(rankings.shape[0], -1)
    nll = PLNegLogLikelihood.apply(scores, rankings, mask)
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        _validation.nonempty("rankings", int(rankings.shape[0]))
        return nll.mean()
    return nll
