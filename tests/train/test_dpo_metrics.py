"""DPOTrainer's logged metrics against a hand computation from the model's logits, per loss variant:
TRL's (>= 0.29) names and values (sums), HA-DPO's names for the same sums, IPO's per-token averages."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from llava_core.train.dpo import DPOTrainer
from tests.train.test_dpo_trainer import LLAVA, _args, _lora, setup  # noqa: F401 (setup is the fixture)

BETA = 0.3


def _by_hand(model, batch, side: str) -> tuple[list[float], list[int]]:
    """Per row: the summed log-probability of the label tokens and their number, one sequence at a time."""
    sums, counts = [], []
    for i in range(batch[f"{side}_input_ids"].shape[0]):
        n = int(batch[f"{side}_attention_mask"][i].sum())
        ids, labels = batch[f"{side}_input_ids"][i, :n], batch[f"{side}_labels"][i, :n]
        with torch.no_grad():
            logits = model(input_ids=ids[None], pixel_values=batch["pixel_values"][i:i + 1]).logits[0].float()
        logp = F.log_softmax(logits, -1)
        total, count = 0.0, 0
        for t in range(1, n):
            if labels[t] != -100:
                total += logp[t - 1, labels[t]].item()
                count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def _mean(xs) -> float:
    return sum(xs) / len(xs)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_logged_metrics_equal_a_hand_computation(setup, loss_type):  # noqa: F811
    root, path, dataset, collator = setup
    policy = _lora(LlavaForConditionalGeneration.from_pretrained(path), live=True).eval()
    trainer = DPOTrainer(model=policy, args=_args(root / f"metrics-{loss_type}"), train_dataset=dataset,
                         data_collator=collator, beta=BETA, loss_type=loss_type, **LLAVA)
    batch = collator([dataset[0], dataset[1]])
    loss = trainer.compute_loss(policy, batch)
    logged = {k: v[0].item() for k, v in trainer._stored.items()}

    pc, nc = _by_hand(policy, batch, "chosen")
    pr, nr = _by_hand(policy, batch, "rejected")
    with policy.disable_adapter():
        rc, _ = _by_hand(policy, batch, "chosen")
        rr, _ = _by_hand(policy, batch, "rejected")
    rew_c = [BETA * (a - b) for a, b in zip(pc, rc)]
    rew_r = [BETA * (a - b) for a, b in zip(pr, rr)]
    want = {"rewards/chosen": _mean(rew_c), "rewards/rejected": _mean(rew_r),
            "rewards/margins": _mean([a - b for a, b in zip(rew_c, rew_r)]),
            "rewards/accuracies": _mean([float(a > b) for a, b in zip(rew_c, rew_r)]),
            "logps/chosen": _mean(pc), "logps/rejected": _mean(pr),
            "logps/ref_chosen": _mean(rc), "logps/ref_rejected": _mean(rr),
            "policy_logps/chosen": _mean(pc), "policy_logps/rejected": _mean(pr),
            "referece_logps/chosen": _mean(rc), "referece_logps/rejected": _mean(rr)}
    d = [(a - b) - (c - e) for a, b, c, e in zip(pc, pr, rc, rr)]
    if loss_type == "ipo":
        avg_c = [BETA * (a - b) / n for a, b, n in zip(pc, rc, nc)]
        avg_r = [BETA * (a - b) / n for a, b, n in zip(pr, rr, nr)]
        want |= {"rewards_per_token/chosen": _mean(avg_c), "rewards_per_token/rejected": _mean(avg_r),
                 "rewards_per_token/margins": _mean([a - b for a, b in zip(avg_c, avg_r)]),
                 "rewards_per_token/accuracies": _mean([float(a > b) for a, b in zip(avg_c, avg_r)]),
                 "logps_per_token/chosen": _mean([a / n for a, n in zip(pc, nc)]),
                 "logps_per_token/rejected": _mean([a / n for a, n in zip(pr, nr)])}
        per_token = [(a - c) / m - (b - e) / n for a, b, c, e, m, n in zip(pc, pr, rc, rr, nc, nr)]
        want_loss = _mean([(x - 1 / (2 * BETA)) ** 2 for x in per_token])
    elif loss_type == "sigmoid":
        want_loss = _mean([-F.logsigmoid(torch.tensor(BETA * x)).item() for x in d])
    else:
        want_loss = _mean([max(0.0, 1 - BETA * x) for x in d])
    assert set(logged) == set(want)
    for name, value in want.items():
        assert logged[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert loss.item() == pytest.approx(want_loss, rel=1e-4, abs=1e-6)
    assert logged["rewards/margins"] != pytest.approx(0.0, abs=1e-3)  # live adapters: policy != reference
