"""DPOTrainer on a tiny LLaVA: reference log-probs (adapters disabled == frozen copy; precomputed
table stored and reused on resume) and logged metrics."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainingArguments

from llava_core.config import TrainConfig
from llava_core.data.encoding import Encoder, n_image_tokens
from llava_core.data.images import ImageLoader
from llava_core.data.preference import DPOCollator, DPODataset, read_dpo_records
from llava_core.train.dpo import REFERENCE_FILE, DPOTrainer
from tests.eval_dpo_tiny_llava import tiny_llava, write_images

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "logps/ref_chosen", "logps/ref_rejected"]


LLAVA = {"llava_cfg": TrainConfig(), "lengths": []}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    path = tiny_llava(root / "model")
    names = write_images(root / "images", 4)
    rows = [{"id": str(i), "image": name,
             "conversations": [{"from": "human", "value": "<image>\nis there a red circle ?"}],
             "chosen": "no", "rejected": "yes there is a red circle"} for i, name in enumerate(names)]
    (root / "pairs.json").write_text(json.dumps(rows))
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path)
    encoder = Encoder(processor.tokenizer, "vicuna_v1", n_image_tokens(model.config, processor), 256)
    images = ImageLoader(processor.image_processor, str(root / "images"), "pad")
    dataset = DPODataset(read_dpo_records(root / "pairs.json"), encoder, images)
    return root, path, dataset, DPOCollator(processor.tokenizer.pad_token_id)


def _args(out, **kw):
    return TrainingArguments(output_dir=str(out), remove_unused_columns=False, report_to="none",
                             use_cpu=True, per_device_train_batch_size=2, save_strategy="no", **kw)


def _lora(model, live: bool):
    """LoRA on the LLM's q/v projections; ``live``: adapters that already change the outputs
    (fresh ones are zero in lora_B, so the policy starts equal to the reference)."""
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    torch.manual_seed(1)
    for name, p in peft.named_parameters():
        if live and "lora_B" in name:
            p.data.normal_(0, 0.5)
    return peft


def test_adapter_disabled_reference_equals_frozen_copy(setup):
    root, path, dataset, collator = setup
    base = LlavaForConditionalGeneration.from_pretrained(path)
    frozen = copy.deepcopy(base).eval()
    peft = _lora(base, live=True)
    trainer = DPOTrainer(model=peft, args=_args(root / "lora"), train_dataset=dataset,
                         data_collator=collator, beta=0.1, **LLAVA)
    batch = collator([dataset[0], dataset[1]])
    ref_c, ref_r = trainer.reference_logps(peft, batch)
    with torch.no_grad():
        want_c, want_r, _, _ = trainer.pair_logps(frozen, batch)
        pol_c, _, _, _ = trainer.pair_logps(peft, batch)
    assert torch.allclose(ref_c, want_c, atol=1e-5) and torch.allclose(ref_r, want_r, atol=1e-5)
    assert not torch.allclose(pol_c, want_c, atol=1e-3)     # the adapters are live otherwise
    assert not (root / "lora" / REFERENCE_FILE).exists()    # no precomputation needed


def test_precomputed_reference_stored_and_reused_on_resume(setup):
    root, path, dataset, collator = setup
    out = root / "full"
    model = LlavaForConditionalGeneration.from_pretrained(path)
    frozen = copy.deepcopy(model).eval()
    trainer = DPOTrainer(model=model, args=_args(out), train_dataset=dataset,
                         data_collator=collator, beta=0.1, **LLAVA)
    batch = collator([dataset[2], dataset[3]])
    ref_c, ref_r = trainer.reference_logps(model, batch)
    with torch.no_grad():
        want_c, want_r, _, _ = trainer.pair_logps(frozen, batch)
    assert torch.allclose(ref_c, want_c, atol=1e-5) and torch.allclose(ref_r, want_r, atol=1e-5)
    assert len(torch.load(out / REFERENCE_FILE, weights_only=True)) == len(dataset)

    # a resumed job reads the table, whatever the policy has become since
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    resumed = DPOTrainer(model=model, args=_args(out), train_dataset=dataset,
                         data_collator=collator, beta=0.1, **LLAVA)
    resumed.state.global_step = 3
    again_c, _ = resumed.reference_logps(model, batch)
    assert torch.equal(again_c, ref_c)

    (out / REFERENCE_FILE).unlink()
    lost = DPOTrainer(model=model, args=_args(out), train_dataset=dataset,
                      data_collator=collator, beta=0.1, **LLAVA)
    lost.state.global_step = 3
    with pytest.raises(FileNotFoundError, match="missing on resume at step 3"):
        lost.reference_logps(model, batch)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_training_logs_dpo_metrics_and_raises_margin(setup, loss_type):
    root, path, dataset, collator = setup
    peft = _lora(LlavaForConditionalGeneration.from_pretrained(path), live=False)
    trainer = DPOTrainer(model=peft, args=_args(root / f"train-{loss_type}", max_steps=6,
                                                learning_rate=5e-3, logging_steps=1,
                                                lr_scheduler_type="constant"),
                         train_dataset=dataset, data_collator=collator, beta=0.1,
                         loss_type=loss_type, **LLAVA)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and all(m in logs[0] for m in METRICS)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at start
    assert logs[-1]["rewards/margins"] > 0 and logs[-1]["loss"] < logs[0]["loss"]


def test_too_long_pair_stops_before_training_naming_the_record(setup, tmp_path):
    root, path, dataset, collator = setup
    rows = json.loads((root / "pairs.json").read_text())
    rows[1]["rejected"] = " ".join(["yes"] * 300)
    (tmp_path / "long.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"record 1 \(id='1'\): prompt \+ rejected answer is \d+ tokens"):
        DPODataset(read_dpo_records(tmp_path / "long.json"), dataset.encoder, dataset.images,
                   source=str(tmp_path / "long.json"))
    assert dataset.modality_lengths[0] > 0      # image pairs count positive, as in LLaVA's sampler
