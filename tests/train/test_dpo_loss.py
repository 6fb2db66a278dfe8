"""DPO loss variants and sequence log-probs against direct computations."""

import math

import pytest
import torch

from llava_core.train.dpo import dpo_loss, sequence_logps


def _direct(pc, pr, rc, rr, beta, kind):
    d = (pc - pr) - (rc - rr)
    if kind == "sigmoid":
        return -math.log(1 / (1 + math.exp(-beta * d)))
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - beta * d)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_variants_match_direct_formula(kind, beta):
    pc, pr = torch.tensor([-5.0, -9.0, -2.0]), torch.tensor([-7.0, -3.0, -2.5])
    rc, rr = torch.tensor([-6.0, -8.0, -2.0]), torch.tensor([-6.5, -4.0, -1.0])
    losses, r_c, r_r = dpo_loss(pc, pr, rc, rr, beta, kind)
    for i in range(3):
        expected = _direct(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta, kind)
        assert losses[i].item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(r_c, beta * (pc - rc))
    assert torch.allclose(r_r, beta * (pr - rr))


def test_loss_gradient_raises_chosen_and_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), 0.1, "sigmoid")
    loss.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()


def test_loss_rejects_unknown_variant_and_bad_beta():
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown DPO loss_type 'kto'"):
        dpo_loss(t, t, t, t, 0.1, "kto")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(t, t, t, t, 0.0, "sigmoid")


def test_sequence_logps_sums_label_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    sums, counts = sequence_logps(logits, labels)
    logp = torch.log_softmax(logits, -1)
    expected = [logp[0, 1, 3] + logp[0, 2, 4],
                logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 6] + logp[1, 3, 0]]
    assert torch.allclose(sums, torch.stack(expected), atol=1e-5)
    assert counts.tolist() == [2, 4]
