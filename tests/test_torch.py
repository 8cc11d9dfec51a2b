"""prefcal.torch.pl_nll (the ListMLE loss) against autograd through a plain torch formulation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import prefcal.torch  # noqa: E402
from prefcal import pl  # noqa: E402


def listmle_torch(scores: torch.Tensor, rankings: torch.Tensor) -> torch.Tensor:
    """-log P of full rankings with torch ops only: gather, reverse cumulative log-sum-exp."""
    x = torch.gather(scores, 1, rankings)
    lse = torch.logcumsumexp(x.flip(1), dim=1).flip(1)
    return -(x - lse)[:, :-1].sum(dim=1)


def devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available() and prefcal.backends()["cuda"]["available"]:
        out.append("cuda")
    return out


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_pl_nll_matches_autograd(device, dtype, reduction):
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(64, 7, generator=g, dtype=dtype) * 2).to(device).requires_grad_()
    rankings = torch.argsort(torch.rand(64, 7, generator=g), dim=1).to(device)
    ours = prefcal.torch.pl_nll(scores, rankings, reduction=reduction)
    ref = listmle_torch(scores, rankings)
    ref = {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    w = torch.rand(ours.shape, generator=g, dtype=dtype).to(device) if reduction == "none" else None
    (ga,) = torch.autograd.grad(ours, scores, w)
    (gb,) = torch.autograd.grad(ref, scores, w)
    torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)
    assert ours.device.type == device and ours.dtype == dtype


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_pl_nll_global_scores_partial_and_masks(reduction):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(6, dtype=torch.float64, generator=g).requires_grad_()
    rankings = torch.tensor([[0, 1, 2, -1, -1], [5, 4, -1, -1, -1], [3, 2, 1, 0, 5]])
    mask = torch.tensor([True, True, True, True, True, True])
    loss = prefcal.torch.pl_nll(scores, rankings, mask, reduction=reduction)
    w = torch.rand(3, dtype=torch.float64, generator=g) if reduction == "none" else None
    (grad,) = torch.autograd.grad(loss, scores, w)
    # finite differences of the same loss
    eps = 1e-6
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = eps
        up = prefcal.torch.pl_nll(scores.detach() + e, rankings, mask, reduction=reduction)
        down = prefcal.torch.pl_nll(scores.detach() - e, rankings, mask, reduction=reduction)
        fd = ((up - down) / (2 * eps) * (w if w is not None else 1)).sum()
        assert float(grad[i]) == pytest.approx(float(fd), abs=1e-7)
    with pytest.raises(ValueError, match=r"^scores contains NaN at index 2$"):
        prefcal.torch.pl_nll(torch.tensor([0.0, 1.0, float("nan")]), torch.tensor([[0, 1, 2], [2, 0, -1]]))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["row", "global"])
def test_pl_nll_with_choice_set_masks(device, kind):
    """Per-row and global choice sets that leave items out: the loss is -log_likelihood under the mask, its
    gradient the reference's (zero on the masked items), on every device."""
    from prefcal import _reference

    rng = np.random.default_rng(3)
    n_rows, n = 40, 7
    if kind == "row":
        mask = rng.random((n_rows, n)) < 0.6
        mask[:, :2] = True
    else:
        mask = np.array([True, False, True, True, True, False, True])
    rows_mask = np.broadcast_to(mask, (n_rows, n))
    keys = np.where(rows_mask, rng.gumbel(size=(n_rows, n)), -np.inf)
    order = np.argsort(-keys, axis=1)
    rankings = np.where(np.take_along_axis(rows_mask, order, 1), order, -1)
    rankings[::3, 2:] = -1  # top-2 of the choice set
    scores = rng.normal(size=(n_rows, n)) * 2
    want, want_grad, _ = _reference.pl_loglik(scores, rankings, mask, True)
    s = torch.tensor(scores, device=device).requires_grad_()
    loss = prefcal.torch.pl_nll(
        s, torch.tensor(rankings, device=device), torch.tensor(mask, device=device), reduction="sum"
    )
    (grad,) = torch.autograd.grad(loss, s)
    assert float(loss.detach()) == pytest.approx(-float(want.sum()), rel=1e-12)
    np.testing.assert_allclose(grad.cpu().numpy(), -want_grad, rtol=1e-10, atol=1e-12)
    assert (grad.cpu().numpy()[~rows_mask] == 0).all()
    m = torch.tensor(mask[:6] if kind == "row" else mask, device=device)
    r = torch.tensor(rankings[:6], device=device)
    x = s.detach()[:6].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: prefcal.torch.pl_nll(x, r, m, reduction="none"), (x,))


def test_pl_nll_gradcheck():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_()
    rankings = torch.tensor([[0, 1, 2, 3], [3, -1, -1, -1], [1, 0, -1, -1], [2, 3, 1, 0], [0, 2, 1, -1]])
    assert torch.autograd.gradcheck(lambda s: prefcal.torch.pl_nll(s, rankings, reduction="none"), (scores,))


@pytest.mark.parametrize("device", devices())
def test_pl_nll_second_derivatives_are_an_error_not_zero(device):
    scores = torch.tensor([[0.5, -0.2, 1.0], [0.0, 0.3, -1.0]], dtype=torch.float64, device=device)
    rankings = torch.tensor([[2, 0, 1], [1, 0, 2]], device=device)
    s = scores.clone().requires_grad_()
    (g,) = torch.autograd.grad(prefcal.torch.pl_nll(s, rankings, reduction="sum"), s, create_graph=True)
    (want,) = torch.autograd.grad(listmle_torch(scores.requires_grad_(), rankings).sum(), scores)
    torch.testing.assert_close(g.detach(), want, rtol=1e-12, atol=1e-12)  # the first derivative is there
    with pytest.raises(RuntimeError, match="differentiable once"):
        (g**2).sum().backward()  # a gradient penalty
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.functional.hessian(lambda x: prefcal.torch.pl_nll(x, rankings).sum(), s.detach())


def test_pl_nll_first_derivatives_survive_what_the_second_derivative_guard_could_break():
    rankings = torch.tensor([[0, 1, 2], [2, 1, 0]])
    # the scores changed in place before backward(): the gradient does not read them
    base = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    s = base * 1.0
    loss = prefcal.torch.pl_nll(s, rankings, reduction="sum")
    (want,) = torch.autograd.grad(listmle_torch(s, rankings).sum(), base, retain_graph=True)
    with torch.no_grad():
        s.add_(1.0)
    loss.backward()
    torch.testing.assert_close(base.grad, want, rtol=1e-12, atol=1e-12)
    # scores whose sum overflows: the guard adds an exact 0 (was 0 * inf = NaN under create_graph)
    big = torch.tensor([[3e38, 3e38, -3e38]], dtype=torch.float32, requires_grad=True)
    loss = prefcal.torch.pl_nll(big, rankings[:1], reduction="sum")
    (g,) = torch.autograd.grad(loss, big, create_graph=True)
    torch.testing.assert_close(g.detach(), torch.tensor([[0.0, 1.0, 0.0]]))
    # the gradient is linear in grad_output: its derivative there (a JVP by the double-backward trick) is
    # exact
    s = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, dtype=torch.float64)

    def nll(x):
        return prefcal.torch.pl_nll(x, rankings, reduction="none")

    _, jvp = torch.autograd.functional.jvp(nll, s, v)
    eps = 1e-6
    with torch.no_grad():
        fd = (nll(s + eps * v) - nll(s - eps * v)) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-8)


def test_pl_nll_is_a_drop_in_training_loss():
    """A few steps of gradient descent on a ListMLE objective reduce the loss, as any torch loss would."""
    g = torch.Generator().manual_seed(3)
    truth = torch.randn(200, 5, generator=g, dtype=torch.float64)
    rankings = torch.from_numpy(pl.sample(truth.numpy(), seed=5)[:, 0].astype(np.int64))
    s = torch.zeros(200, 5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([s], lr=5.0)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = prefcal.torch.pl_nll(s, rankings)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_pl_nll_rejects_bad_rankings():
    with pytest.raises(ValueError, match=r"rankings\[1\] repeats item 0"):
        prefcal.torch.pl_nll(torch.zeros(2, 3), torch.tensor([[0, 1, 2], [0, 0, 1]]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        prefcal.torch.pl_nll(torch.zeros(2, 3), torch.tensor([[0, 1, 2], [0, 2, 1]]), reduction="avg")
    with pytest.raises(TypeError, match="scores must be a torch.Tensor .* got ndarray"):
        prefcal.torch.pl_nll(np.zeros((2, 3)), torch.tensor([[0, 1, 2], [0, 2, 1]]))
    with pytest.raises(TypeError, match="rankings must be a torch.Tensor .* got list"):
        prefcal.torch.pl_nll(torch.zeros(2, 3), [[0, 1, 2], [0, 2, 1]])
