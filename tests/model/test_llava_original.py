"""LLaVA-original checkpoints in and out: tiny checkpoints written in the layout LLaVA's training
writes (LlavaLlamaForCausalLM's config fields and key names, sharded torch files or safetensors),
loaded through --model_name_or_path and written back by ``jobs.export --to llava``, with logits equal
to LLaVA's own forward (tests/llava_reference.py) both ways."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from llava_core.compat import TORCH, save_portable
from llava_core.config import TrainConfig
from llava_core.model.build import build_model, is_llava_checkpoint
from llava_core.model.hub import ModelNotFoundError
from tests import llava_reference as ref
from tests.llama_tokenizer import llama_tokenizer

ROOT = Path(__file__).resolve().parents[2]
N_PATCHES = 16  # 32 px / patch 8


def _tower(folder: Path) -> Path:
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=3, num_attention_heads=2, projection_dim=32))
    tower.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _llava_config(vocab: int, tower: Path, projector: str, unfreeze: bool) -> dict:
    """config.json as LLaVA-1.5's training writes it (liuhaotian/llava-v1.5-7b's fields, tiny sizes)."""
    return {
        "_name_or_path": "./checkpoints/vicuna-tiny", "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 1, "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "hidden_act": "silu",
        "hidden_size": 64, "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": 128,
        "max_position_embeddings": 256, "mm_hidden_size": 32, "mm_patch_merge_type": "flat",
        "mm_projector_lr": None, "mm_projector_type": projector, "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": str(tower), "model_type": "llava", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 4, "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.31.0", "tokenizer_model_max_length": 256, "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": unfreeze, "use_cache": True,
        "use_mm_proj": True, "vocab_size": vocab,
    }


def write_original(folder: Path, tower: Path, fmt: str, projector: str, unfreeze: bool) -> dict[str, torch.Tensor]:
    """A tiny LLaVA-original checkpoint; returns its weights. ``fmt``: ``bin`` (two torch shards and
    their index, as llava-v1.5-7b) or ``safetensors``; ``unfreeze``: a trained tower in the weights."""
    torch.manual_seed(1)
    tokenizer = llama_tokenizer(legacy=False)
    config = _llava_config(len(tokenizer), tower, projector, unfreeze)
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_")}))
    state = dict(llm.state_dict())
    if projector == "linear":
        state |= {"model.mm_projector.weight": torch.randn(64, 32) * 0.1, "model.mm_projector.bias": torch.randn(64) * 0.1}
    else:
        state |= {"model.mm_projector.0.weight": torch.randn(64, 32) * 0.1, "model.mm_projector.0.bias": torch.randn(64) * 0.1,
                  "model.mm_projector.2.weight": torch.randn(64, 64) * 0.1, "model.mm_projector.2.bias": torch.randn(64) * 0.1}
    if unfreeze:  # trained: not the weights at mm_vision_tower
        trained = CLIPVisionModel.from_pretrained(tower)
        inner = "" if hasattr(trained, "vision_model") else "vision_model."
        state |= {f"model.vision_tower.vision_tower.{inner}{k}": v + 0.05 * torch.randn_like(v)
                  for k, v in trained.state_dict().items()}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if fmt == "bin":
        keys = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, part in shards.items():
            torch.save({k: state[k] for k in part}, folder / name)
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({
            "metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
            "weight_map": {k: name for name, part in shards.items() for k in part}}))
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    save_portable(tokenizer, folder)
    return state


def _inputs(tokenizer, image_processor):
    before = tokenizer("A chat. USER:").input_ids
    after = tokenizer("\nWhat is in the image? ASSISTANT:", add_special_tokens=False).input_ids
    pixels = image_processor(Image.new("RGB", (32, 32), (200, 30, 30)), return_tensors="pt")["pixel_values"]
    return before, after, pixels


def _our_logits(model, before, after, pixels):
    ids = torch.tensor([before + [model.config.image_token_index] * N_PATCHES + after])
    with torch.no_grad():
        return model.eval()(input_ids=ids, pixel_values=pixels).logits[0]


def _equal_to_llava(folder: Path, model, processor) -> None:
    before, after, pixels = _inputs(processor.tokenizer, processor.image_processor)
    want = ref.llava_logits(folder, before + [ref.IMAGE_TOKEN_INDEX] + after, pixels)
    got = _our_logits(model, before, after, pixels)
    assert got.shape[0] == want.shape[0]
    assert torch.allclose(got[:, :want.shape[1]], want, atol=1e-5), (got[:, :want.shape[1]] - want).abs().max()


CASES = [("bin", "mlp2x_gelu", False), ("safetensors", "linear", True)]


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> Path:
    return _tower(tmp_path_factory.mktemp("tower") / "clip-tiny")


@pytest.mark.parametrize("fmt,projector,unfreeze", CASES, ids=["bin-shards-mlp2x", "safetensors-linear-trained-tower"])
def test_original_checkpoint_loads_with_llavas_logits_and_exports_back(tmp_path, tower, fmt, projector, unfreeze):
    original = tmp_path / "llava-v1.5-tiny"
    state = write_original(original, tower, fmt, projector, unfreeze)
    assert is_llava_checkpoint(str(original))  # so no --vision_tower is asked for
    if fmt == "bin" and TORCH < Version("2.6"):
        with pytest.raises(ValueError, match=r"cannot load \.bin weights safely \(CVE-2025-32434"):
            build_model(TrainConfig(model_name_or_path=str(original)))
        return
    model, processor = build_model(TrainConfig(model_name_or_path=str(original)))
    assert model.config.projector_hidden_act == ("gelu" if projector == "mlp2x_gelu" else "linear")
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index == len(processor.tokenizer) - 1
    _equal_to_llava(original, model, processor)

    # a run that started from it, exported back by the CLI
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    save_portable(processor, run / "final")
    (run / "config.yaml").write_text(f"job: finetune\nmodel_name_or_path: {original}\nversion: v1\nmodel_max_length: 256\n")
    subprocess.run([sys.executable, "-m", "jobs.export", str(run), "--to", "llava"], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    exported = run / "llava-run"
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlavaLlamaForCausalLM"] and config["model_type"] == "llava_llama"
    assert config["mm_vision_tower"] == str(tower) and config["unfreeze_mm_vision_tower"] is True
    for field in ("mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
                  "mm_patch_merge_type", "mm_use_im_start_end", "mm_use_im_patch_token", "use_mm_proj",
                  "image_aspect_ratio", "rope_theta", "hidden_size", "num_hidden_layers"):
        assert config[field] == _llava_config(0, tower, projector, unfreeze)[field], field
    assert config["vocab_size"] == len(processor.tokenizer)  # the <image> row stays
    written = ref._original_weights(exported)
    expected = set(state) | {k for k in written if k.startswith("model.vision_tower.vision_tower.vision_model.")}
    assert set(written) == expected
    for k, v in state.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(written[k][:v.shape[0]], v), k
        elif not k.startswith("model.vision_tower."):
            assert torch.allclose(written[k], v, atol=1e-6), k
    _equal_to_llava(exported, model, processor)

    # and in again: the same model, token for token
    again, again_processor = build_model(TrainConfig(model_name_or_path=str(exported)))
    assert len(again_processor.tokenizer) == len(processor.tokenizer)
    before, after, pixels = _inputs(processor.tokenizer, processor.image_processor)
    assert torch.allclose(_our_logits(again, before, after, pixels), _our_logits(model, before, after, pixels), atol=1e-5)


def test_hf_format_run_exports_its_tower_beside(tmp_path):
    """A model started from an HF-format LLaVA (no --vision_tower): the tower is written beside it."""
    from tests.eval_dpo_tiny_llava import tiny_llava

    run = tmp_path / "run"
    path = tiny_llava(run / "final")
    (run / "config.yaml").write_text(f"job: finetune\nmodel_name_or_path: {path}\nversion: v1\n")
    subprocess.run([sys.executable, "-m", "jobs.export", str(run), "--to", "llava", "--out", str(tmp_path / "llava-out")],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    exported = tmp_path / "llava-out"
    assert json.loads((exported / "config.json").read_text())["mm_vision_tower"] == str(exported / "vision_tower")
    model, processor = build_model(TrainConfig(model_name_or_path=str(path)))
    before, after, pixels = _inputs(processor.tokenizer, processor.image_processor)
    ids = before + [ref.IMAGE_TOKEN_INDEX] + after
    want = ref.llava_logits(exported, ids, pixels)
    ours = _our_logits(model, before, after, pixels)
    assert torch.allclose(ours, want, atol=1e-5)


def test_unsupported_checkpoints_and_missing_tower_are_clear_errors(tmp_path, tower):
    original = tmp_path / "llava-3x"
    write_original(original, tower, "safetensors", "mlp2x_gelu", False)
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps(config | {"mm_projector_type": "mlp3x_gelu"}))
    with pytest.raises(ValueError, match=rf"--model_name_or_path {original}: mm_projector_type 'mlp3x_gelu'"):
        build_model(TrainConfig(model_name_or_path=str(original)))
    (original / "config.json").write_text(json.dumps(config | {"mm_vision_tower": str(tmp_path / "no-such-clip")}))
    with pytest.raises(ModelNotFoundError, match=r"names the vision tower mm_vision_tower=.*no-such-clip"):
        build_model(TrainConfig(model_name_or_path=str(original)))
    (original / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="leave out --pretrain_mm_mlp_adapter"):
        build_model(TrainConfig(model_name_or_path=str(original), pretrain_mm_mlp_adapter=str(original / "x.bin")))


def test_jobs_export_converts_an_original_checkpoint_for_chat_and_eval(tmp_path, tower):
    """``jobs.export CHECKPOINT --out DIR``: the HF-format model that ``--model`` (eval, chat) loads."""
    from llava_core.model.inference import load_model

    original = tmp_path / "llava-v1.5-tiny"
    write_original(original, tower, "safetensors", "mlp2x_gelu", False)
    subprocess.run([sys.executable, "-m", "jobs.export", str(original), "--out", str(tmp_path / "hf")],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    model, processor = load_model(tmp_path / "hf")
    assert processor.chat_template  # v1's, as LLaVA-1.5 is prompted
    _equal_to_llava(original, model, processor)


def _parts_of(path: str) -> str:
    from llava_core.model.llava_original import as_parts

    return as_parts(TrainConfig(model_name_or_path=path)).model_name_or_path


def test_ranks_converting_at_once_share_one_complete_parts_folder(tmp_path, tower):
    """The ranks of a node convert the same checkpoint at the same moment: the first folder wins."""
    from concurrent.futures import ProcessPoolExecutor

    original = tmp_path / "llava-v1.5-tiny"
    write_original(original, tower, "safetensors", "mlp2x_gelu", True)
    with ProcessPoolExecutor(3) as pool:
        folders = set(pool.map(_parts_of, [str(original)] * 3))
    assert len(folders) == 1
    parts = Path(folders.pop())
    assert {p.name for p in parts.iterdir()} >= {"config.json", "mm_projector.bin", "model.safetensors", "vision_tower"}
    assert not list(parts.parent.glob(f".{parts.name}.tmp-*"))  # no temp folders left


def test_processor_and_size_estimate_need_no_weights(tmp_path, tower):
    """What submit's checks and data validation load (processor, meta-device model) reads configs only."""
    from llava_core.model.build import load_processor, skeleton

    original = tmp_path / "llava-v1.5-tiny"
    write_original(original, tower, "safetensors", "mlp2x_gelu", True)
    (original / "model.safetensors").unlink()
    cfg = TrainConfig(model_name_or_path=str(original))
    processor, n_image_tokens = load_processor(cfg)
    assert n_image_tokens == N_PATCHES and "<image>" in processor.tokenizer.get_vocab()
    model = skeleton(cfg)
    assert model.config.vision_feature_layer == -2
    assert model.model.multi_modal_projector.linear_1.weight.shape == (64, 32)
