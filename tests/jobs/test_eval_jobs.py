"""Job helpers for eval/DPO/chat: option validation, shipped presets, one-shot chat."""


import pytest

from jobs.chat import main as chat
from jobs.check import FAILED
from jobs.kinds.dpo import DPO
from jobs.kinds.eval import EVAL, eval_checks
from jobs.options import load_preset, resolve
from tests.eval_dpo_tiny_llava import tiny_llava, write_images


def _preset(name):
    return load_preset(name)   # the preset's flags (its kind: is not one)


def test_hadpo_preset_is_the_published_recipe():
    cfg = DPO.settings(_preset("hadpo-llava15-7b") | {"data_path": "pairs.json", "output_dir": "runs/x"})
    assert {"beta": cfg.beta, "loss_type": cfg.loss_type} == {"beta": 0.1, "loss_type": "sigmoid"}
    assert (cfg.lora_enable, cfg.lora_r, cfg.lora_alpha, cfg.mm_projector_lr) == (True, 128, 256, 0.0)
    # HA-DPO ran ZeRO-3; the preset chooses by size (--deepspeed auto), which changes no update
    assert (cfg.learning_rate, cfg.warmup_steps, cfg.num_train_epochs, cfg.deepspeed) == (2e-6, 0, 1.0, "auto")
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 8 == 128


def test_tiny_dpo_preset_validates():
    cfg = DPO.settings(_preset("dpo-tiny") | {"model_name_or_path": "m", "data_path": "p.json", "output_dir": "o"})
    assert cfg.unfreeze_mm_vision_tower and not cfg.lora_enable and cfg.beta == 0.5


def test_dpo_settings_errors_name_the_flag():
    with pytest.raises(ValueError, match="--beta is required"):
        DPO.settings({"model_name_or_path": "m"})
    with pytest.raises(ValueError, match="--loss_type 'kto'"):
        DPO.settings({"beta": 0.1, "loss_type": "kto"})
    with pytest.raises(ValueError, match=r"unknown flag --lora_rank; did you mean .*--lora_r\b"):
        DPO.settings({"beta": 0.1, "lora_rank": 8})


def test_eval_settings_preset_and_errors(tmp_path):
    model = tiny_llava(tmp_path / "model")
    write_images(tmp_path / "images", 1)
    (tmp_path / "pope").mkdir()
    for split in ("random", "popular", "adversarial"):   # LLaVA's layout: one question file per split
        (tmp_path / "pope" / f"coco_pope_{split}.json").write_text("")
    s = EVAL.settings(_preset("pope") | {"model": str(model), "data": str(tmp_path / "pope"),
                                         "image_folder": str(tmp_path / "images")})
    assert s.split == "random,popular,adversarial" and s.max_new_tokens == 128 and not any(
        c.status == FAILED for c in eval_checks(s))
    with pytest.raises(ValueError, match="unknown flag --splits; did you mean --split"):
        resolve(None, None, {"splits": "random"}, EVAL.option_names())
    bad = eval_checks(EVAL.settings({"task": "pope", "model": str(tmp_path), "data": "x", "image_folder": "y"}))
    assert [c.status for c in bad if "not an HF-format model" in c.detail] == [FAILED]


def test_chat_one_shot_answers_from_a_run_folder(tmp_path, capsys):
    tiny_llava(tmp_path / "run" / "final")
    (image,) = write_images(tmp_path / "images", 1)
    chat("is there a red circle ?", model=str(tmp_path / "run"), image=str(tmp_path / "images" / image),
         max_new_tokens=3)
    answer = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(answer.split()) == 3        # three greedy tokens of the word-level vocabulary
