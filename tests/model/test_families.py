"""The family table (``llava_core.model.families``) and each family's tiny model: parts, LoRA
targets, image tokens asked of the processor, packed loss equal to padded (Qwen-VL's 3-D positions
per segment), and ``jobs.submit finetune`` on the saved folder (full and LoRA, packed where the
family packs), its ``final/`` loading with ``AutoModelForImageTextToText`` + ``AutoProcessor``
and generating."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from jobs.cli import CommandFailed
from jobs.submit import submit_job
from llava_core.compat import load_auto_processor, stack
from llava_core.config import TrainConfig
from llava_core.data.dataset import ProcessorCollator, add_processor_blank_image
from llava_core.data.encoding import IGNORE_INDEX, ProcessorEncoder
from llava_core.data.formats import read_records
from llava_core.demo.families import BUILDERS, build_tiny_family, write_family_data
from llava_core.model.families import FAMILIES, UnsupportedFamily, family_of
from llava_core.model.freeze import apply_freeze_plan, part_of
from llava_core.model.lora import lora_target_regex, modules_to_save
from llava_core.train.packing import (
    ProcessorPackingCollator,
    mrope_model,
    packed_causal_lm_loss,
    use_varlen_attention,
)


def _here(model_type: str):
    """``model_type`` as a test parameter, skipped where its processor cannot be built: a venv set up
    before the Makefile installed torchvision (rebuild it: ``rm -r .venv && make setup``)."""
    import importlib.util

    missing = FAMILIES[model_type].needs_torchvision and importlib.util.find_spec("torchvision") is None
    skip = pytest.mark.skipif(missing, reason="no torchvision: rebuild the venv (make setup)")
    return pytest.param(model_type, marks=skip)


HERE = [_here(t) for t in BUILDERS if stack() in FAMILIES[t].stacks]


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> dict[str, str]:
    return write_family_data(tmp_path_factory.mktemp("family_data"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            built[model_type] = build_tiny_family(model_type, root / model_type)
        return built[model_type]
    return get


def test_every_family_in_the_table_has_its_tiny_model_and_an_unknown_type_names_the_supported():
    assert set(BUILDERS) <= set(FAMILIES)
    with pytest.raises(UnsupportedFamily, match="paligemma.*supported are llava, llava_next, llava_onevision"):
        family_of("paligemma")
    with pytest.raises(UnsupportedFamily, match="not available on the dcu stack"):
        family_of("qwen3_vl", "dcu")
    qwen = FAMILIES["qwen2_5_vl"]
    assert qwen.part_of("model.visual.merger.mlp.0.weight") == "projector"
    assert qwen.part_of("model.visual.blocks.0.attn.qkv.weight") == "vision_tower"
    assert qwen.part_of("base_model.model.model.visual.modules_to_save.default.merger.mlp.0.weight") == "projector"
    assert part_of("model.language_model.layers.0.mlp.up_proj.weight", family=qwen) == "llm"


@pytest.mark.parametrize("model_type", HERE)
def test_parts_lora_targets_and_image_tokens_come_from_the_family(model_type, tiny, family_data):
    from transformers import AutoModelForImageTextToText

    family = FAMILIES[model_type]
    model = AutoModelForImageTextToText.from_pretrained(tiny(model_type))
    parts = {part_of(n, family=family) for n, _ in model.named_parameters()}
    assert {"vision_tower", "projector", "llm"} <= parts and "other" not in parts - {"lm_head"}, parts
    regex = lora_target_regex(model)
    assert all(family.part_of(n + ".") == "llm" for n, _ in model.named_modules() if re.fullmatch(regex, n))
    assert modules_to_save(model, {"projector"}) and modules_to_save(model, {"projector", "vision_tower"})
    def trained() -> set[str]:
        return {part_of(n, family=family) for n, p in model.named_parameters() if p.requires_grad}

    head = {"lm_head"} & parts  # tied to the embeddings in some families (no parameter of its own)
    tower = {"freeze_backbone": True, "unfreeze_mm_vision_tower": True}
    first_layer = {"train_modules": [r"(language|text)_model\.layers\.0\."]}
    for flags, parts_trained in (({"tune_mm_mlp_adapter": True}, {"projector"}), ({}, {"projector", "llm", *head}),
                                 (tower, {"projector", "vision_tower"}), (first_layer, {"llm"})):
        apply_freeze_plan(model, TrainConfig(**flags))
        assert trained() == parts_trained, flags

    processor = load_auto_processor(tiny(model_type))
    encoder = ProcessorEncoder(processor, "chat_template", 2048, family_data["image_folder"], family.placeholder)
    records = read_records(family_data["data_path"])
    items, counts = [], set()
    for record in records[:4] + records[-1:]:
        item = encoder.encode(record)
        assert encoder.length(record) == len(item["input_ids"])  # the pre-flight's length is the trained one
        if record.images:  # the processor on the whole prompt gives the same ids
            text, _ = encoder._render(record)
            with Image.open(Path(family_data["image_folder"]) / record.images[0]) as img:
                full = processor(text=[text], images=[img.convert("RGB")], add_special_tokens=False)
            assert list(full["input_ids"][0]) == item["input_ids"]
            counts.add(len(item["input_ids"]) - len(encoder._tokens(record)[0]))
        trained = [t for t, label in zip(item["input_ids"], item["labels"]) if label != IGNORE_INDEX]
        assert trained and encoder.image_id not in trained
        items.append(item)
    if model_type not in ("gemma3",):  # images of other sizes, other token counts (AnyRes, dynamic resolution)
        assert len(counts) > 1, counts
    batch = ProcessorCollator(processor.tokenizer.pad_token_id, family.image_batching)(items)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    # a rank whose batch has no image runs the tower on a blank one (ZeRO-3), the loss unchanged
    text = ProcessorCollator(processor.tokenizer.pad_token_id, family.image_batching)(items[-1:])
    blank = add_processor_blank_image(text, processor, family.placeholder, family.image_batching,
                                      processor.tokenizer.pad_token_id)
    assert blank["input_ids"].shape[0] == 2 and "pixel_values" in blank
    torch.testing.assert_close(model(**blank).loss, model(**text).loss)


PACKS = [p for p in HERE if FAMILIES[p.values[0]].packs]


@pytest.mark.parametrize("model_type", PACKS)
def test_packed_loss_equals_padded_with_3d_positions_per_segment(model_type, tiny, family_data):
    """The packed batch's loss and logits are the padded batch's; for Qwen-VL the packed row's 1-D
    positions spread over the three mRoPE axes (what flattening does) give another loss."""
    from transformers import AutoModelForImageTextToText

    family = FAMILIES[model_type]
    model = AutoModelForImageTextToText.from_pretrained(tiny(model_type)).eval()
    torch.manual_seed(0)
    for name, param in model.named_parameters():  # attention sharp enough to depend on positions
        if family.part_of(name) == "llm" and re.search(r"\.(q|k)_proj\.weight$", name):
            param.data.normal_(std=0.3)
    processor = load_auto_processor(tiny(model_type))
    pad = processor.tokenizer.pad_token_id
    encoder = ProcessorEncoder(processor, "chat_template", 2048, family_data["image_folder"], family.placeholder)
    records = read_records(family_data["data_path"])
    items = [encoder.encode(r) for r in records[:3] + records[-1:] + records[3:5]]  # a text-only one among them
    with torch.no_grad():
        padded_batch = ProcessorCollator(pad, family.image_batching)(items)
        padded = model(**padded_batch)
        kept = padded.logits[:, :-1][padded_batch["labels"][:, 1:] != IGNORE_INDEX]
        use_varlen_attention(model)

        def packed_loss(batch):
            batch = dict(batch)
            labels = batch.pop("labels")
            out = model(**batch)
            logits = out.logits
            if logits.shape[1] == labels.shape[1]:  # a model that ignores logits_to_keep (Qwen2-VL, transformers 4.55)
                logits = logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]
            return packed_causal_lm_loss(out, labels), logits.reshape(-1, logits.shape[-1])

        batch = ProcessorPackingCollator(pad, family.image_batching)(items)
        lengths = torch.tensor([len(x["input_ids"]) for x in items]).cumsum(0)
        assert batch["input_ids"].shape[0] == 1 and batch["cu_seq_lens_q"][1 : len(items) + 1].tolist() == lengths.tolist()
        loss, logits = packed_loss(batch)
        torch.testing.assert_close(loss, padded.loss)
        torch.testing.assert_close(logits, kept)
        assert (mrope_model(model) is not None) == model_type.startswith("qwen")
        if mrope_model(model) is not None:
            flat = packed_loss(batch | {"position_ids": batch["position_ids"][None].expand(3, 1, -1)})[0]
            assert abs(flat - padded.loss) > 1e-4, (flat, padded.loss)  # 5 x the tolerance of the equality
        # a rank whose packed batch has no image runs the tower on a blank segment, the loss unchanged
        text = ProcessorPackingCollator(pad, family.image_batching)(items[3:4])
        blank = add_processor_blank_image(text, processor, family.placeholder, family.image_batching, pad)
        assert "pixel_values" in blank and len(blank["cu_seq_lens_q"]) == len(text["cu_seq_lens_q"]) + 1
        torch.testing.assert_close(packed_loss(blank)[0], packed_loss(text)[0])


def test_an_unsupported_model_type_fails_at_submit_naming_the_families(tmp_path, family_data, capsys):
    from transformers import PaliGemmaConfig

    PaliGemmaConfig().save_pretrained(tmp_path / "pali")
    with pytest.raises(CommandFailed):
        submit_job("finetune", model_name_or_path=str(tmp_path / "pali"), **family_data, executor="local",
                   dry_run=True, output_dir=str(tmp_path / "j"), report_to="none")
    out = capsys.readouterr().out
    assert "model: [failed]" in out
    assert "(model_type 'paligemma') is not a supported model family: supported are llava" in out


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", HERE)
def test_finetune_full_and_lora_through_submit_and_final_generates(model_type, tiny, family_data, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    family = FAMILIES[model_type]
    common = {"model_name_or_path": str(tiny(model_type)), **family_data, "executor": "local", "max_steps": 3,
              "per_device_train_batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0, "model_max_length": 512,
              "report_to": "none", "save_steps": 3, "logging_steps": 1, "packing": True}
    for name, extra in (("full", {}), ("lora", {"lora_enable": True, "lora_r": 4, "lora_alpha": 8})):
        run = tmp_path / name
        submit_job("finetune", output_dir=str(run), **common, **extra)
        out = capsys.readouterr().out
        assert f"model: [passed] {tiny(model_type)}; {family.title} ({model_type})" in out
        if family.packs:
            assert "'attention': 'packed varlen'" in out
        else:
            assert f"--packing: {family.title} does not pack yet, batches are padded" in out
        assert len(losses(run)) == 3 and all(torch.isfinite(torch.tensor(losses(run))))
        log = (run / "logs" / "rank0.log").read_text()
        assert "projector " in log and "vision_tower " in log and ("lora " in log) == (name == "lora")

        final = run / "final"
        model = AutoModelForImageTextToText.from_pretrained(final).eval()
        # AutoProcessor with the PIL image processor: on 4.55 AutoProcessor alone takes Qwen-VL's
        # torchvision one, which needs torch >= 2.2 (torch.compiler.is_compiling)
        processor = load_auto_processor(final)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[Image.new("RGB", (48, 32), (200, 30, 30))], return_tensors="pt",
                           add_special_tokens=False)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
