"""The jobs after training for the other model families (issue 27): a tiny model of each trained
2 LoRA steps through ``jobs.submit finetune``, merged by ``jobs.export --merge-lora`` into a folder
outside the run, which loads with ``AutoModelForImageTextToText`` + ``AutoProcessor`` and generates;
``jobs.submit eval --task pope``, ``jobs.chat`` and ``jobs.serve``'s answer function on that folder
answer as transformers does with the processor's chat template (the family's prompt and image
markup); ``--to llava`` is refused naming the family. ``jobs.submit dpo`` trains each full and
LoRA on pairs encoded by the family's processor."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from jobs.chat import main as chat
from jobs.export import main as export
from jobs.serve import build_app
from jobs.submit import submit_job
from llava_core.compat import load_auto_processor, stack
from llava_core.config import PROMPT_VERSIONS
from llava_core.data.dataset import ProcessorCollator
from llava_core.data.encoding import ProcessorEncoder
from llava_core.data.records import Record
from llava_core.demo.families import BUILDERS, build_tiny_family, write_family_data
from llava_core.eval.benchmarks.base import SHORT_ANSWER
from llava_core.model.families import FAMILIES
from llava_core.model.inference import chat_prompt, load_model, load_on_device
from llava_core.run_config import trained_version
from llava_core.train.dpo import sequence_logps
from tests.model.test_families import _here

FAMILIES_AFTER_TRAINING = [_here(t) for t in BUILDERS if stack() in FAMILIES[t].stacks]
QUESTION = "is there a red circle ?"


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> dict[str, str]:
    return write_family_data(tmp_path_factory.mktemp("family_data"), n=4)


def _hf_answer(model, processor, turns: list[tuple[str, str]], image: Path, n: int) -> str:
    """The greedy answer as transformers gives it: the processor's chat template on the turns (the
    image first in the first question), its processor's image."""
    messages = [{"role": role, "content": ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": text}]}
                for i, (role, text) in enumerate(turns)]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(image) as img:
        inputs = processor(text=[prompt], images=[img.convert("RGB")], return_tensors="pt", add_special_tokens=False)
    inputs.pop("token_type_ids", None)
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + n
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _served(app, image: Path, question: str, history: list[dict]) -> list[dict]:
    """The history after asking the demo's ``/chat`` endpoint (its function, streamed to the end)."""
    respond = next(f.fn for f in app.fns.values() if f.api_name == "chat")
    *_, (history, _) = respond(str(image), question, history, 0.0, 1.0, 3)
    return history


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES_AFTER_TRAINING)
def test_lora_run_exports_merged_and_evaluates_and_chats_as_transformers_answers(model_type, family_data, tmp_path,
                                                                                  capsys):
    family = FAMILIES[model_type]
    run = tmp_path / "run"
    submit_job("finetune", model_name_or_path=str(build_tiny_family(model_type, tmp_path / "base")), **family_data,
               output_dir=str(run), executor="local", max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
               model_max_length=512, report_to="none", save_steps=2, lora_enable=True, lora_r=4, lora_alpha=8)
    exported = tmp_path / "exported"
    export(str(run), merge_lora=True, out=str(exported))
    with pytest.raises(ValueError, match=f"--to llava writes LLaVA-1.5's original format; this model is a {model_type}"):
        export(str(run), merge_lora=True, out=str(tmp_path / "llava"), to="llava")
    assert trained_version(exported)[0] == "chat_template"  # outside the run: the processor's template

    # the exported prompt is what the run trained on (its --version, here through the saved template)
    processor = load_auto_processor(exported)
    trained = trained_version(run)[0]
    assert trained == ("v1" if family.llava_templates else "chat_template")
    _, run_processor = load_model(run)
    assert chat_prompt([("user", QUESTION)], "chat_template", processor, True) == chat_prompt(
        [("user", QUESTION)], PROMPT_VERSIONS[trained], run_processor, True)

    images = sorted(Path(family_data["image_folder"]).iterdir())
    asked = QUESTION + SHORT_ANSWER  # POPE's question as the benchmark asks it
    model = AutoModelForImageTextToText.from_pretrained(exported).eval()
    expected = [_hf_answer(model, processor, [("user", asked)], image, 3) for image in images]

    pope = tmp_path / "pope"
    pope.mkdir()
    (pope / "coco_pope_random.json").write_text("".join(
        json.dumps({"question_id": i, "image": p.name, "text": QUESTION, "label": "yes" if i % 2 else "no"}) + "\n"
        for i, p in enumerate(images)))
    out = tmp_path / "eval"
    submit_job("eval", task="pope", model=str(exported), data=str(pope), image_folder=family_data["image_folder"],
               split="random", batch_size=2, max_new_tokens=3, executor="local", output_dir=str(out))
    doc = json.loads((out / "eval" / "pope.json").read_text())
    assert doc["metrics"]["random"]["n"] == len(images)
    assert [s["answer"] for s in sorted(doc["samples"], key=lambda s: int(s["question_id"]))] == expected

    capsys.readouterr()
    chat(asked, model=str(exported), image=str(images[0]), max_new_tokens=3)
    assert capsys.readouterr().out.strip() == expected[0]

    # serve's answer function, two turns: the history goes through the processor's template too
    app = build_app(*load_on_device(str(exported)), PROMPT_VERSIONS[trained_version(exported)[0]], "t", "")
    history = _served(app, images[1], asked, [])
    assert history[-1] == {"role": "assistant", "content": expected[1]}
    history = _served(app, images[1], "and a blue one ?", history)
    assert history[-1]["content"] == _hf_answer(model, processor, [("user", asked), ("assistant", expected[1]),
                                                                   ("user", "and a blue one ?")], images[1], 3)


def _logps_alone(model, processor, family, folder: str, record: dict, answer: str) -> float:
    """The summed log-probability of ``answer`` after the record's prompt, the pair alone in its
    batch (the supervised encoder and collator, no chosen/rejected stacking, no padding)."""
    data = {**record, "conversations": record["conversations"] + [{"from": "gpt", "value": answer}]}
    fmt = PROMPT_VERSIONS["v1" if family.llava_templates else "chat_template"]  # what dpo defaults to
    item = ProcessorEncoder(processor, fmt, 512, folder, family.placeholder).encode(Record("pairs", 0, data))
    batch = ProcessorCollator(processor.tokenizer.pad_token_id, family.image_batching)([item])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return float(sequence_logps(logits, batch["labels"])[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES_AFTER_TRAINING)
def test_dpo_full_and_lora_train_on_the_familys_pairs(model_type, family_data, tmp_path):
    family = FAMILIES[model_type]
    base = build_tiny_family(model_type, tmp_path / "base")
    records = [{"image": f"img_00{i}.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}],
                "chosen": "A red circle.", "rejected": "A brown dog."} for i in range(4)]
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(records))
    common = {"model_name_or_path": str(base), "data_path": str(pairs), "image_folder": family_data["image_folder"],
              "beta": 0.1, "executor": "local", "max_steps": 3, "warmup_ratio": 0.0, "per_device_train_batch_size": 2,
              "learning_rate": 1e-3, "save_steps": 3, "logging_steps": 1, "model_max_length": 512, "report_to": "none"}
    for name, extra in (("full", {}), ("lora", {"lora_enable": True, "lora_r": 4, "lora_alpha": 8})):
        submit_job("dpo", output_dir=str(tmp_path / name), **common, **extra)
        steps = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                 if '"loss"' in line]
        assert len(steps) == 3 and steps[0]["logps/chosen"] == pytest.approx(steps[0]["logps/ref_chosen"], abs=1e-4)
        assert steps[-1]["rewards/margins"] != 0 and all(math.isfinite(s["loss"]) for s in steps)
        assert (tmp_path / name / "final" / "config.json").is_file()

    # the reference log-probs of each pair, scored in pairs of chosen and rejected rows, are those of
    # each answer scored alone
    model = AutoModelForImageTextToText.from_pretrained(base).eval()
    processor = load_auto_processor(base)
    table = torch.load(tmp_path / "full" / "reference_logps.pt", weights_only=True)
    for i, record in enumerate(records):
        alone = [_logps_alone(model, processor, family, family_data["image_folder"], record, record[side])
                 for side in ("chosen", "rejected")]
        assert table[i] == pytest.approx(alone, abs=1e-3)
