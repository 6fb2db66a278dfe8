"""The embedded default: a generated "shapes" dataset and a tiny LLaVA's parts, saved to disk.

The parts (a small Llama with a locally trained tokenizer, and a small CLIP vision tower briefly
pretrained on the shapes, as a real run starts from a pretrained CLIP) are saved in HF format and
loaded back through the same ``from_pretrained`` path as a real model.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from llava_core.compat import save_portable
from llava_core.io import atomic_write_json, atomic_write_text

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
POPULARITY = (0.35, 0.25, 0.2, 0.12, 0.08)
"""How often each shape is drawn first: POPE's "popular" negatives are the frequent absent ones."""
COMPANION = {"circle": "square", "square": "circle", "triangle": "diamond", "diamond": "triangle", "cross": "circle"}
"""Shapes that tend to appear together: POPE's "adversarial" negatives are absent companions."""
CELLS = ("top left", "top right", "bottom left", "bottom right")
IMAGE_SIZE = 32
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Scene:
    """Objects as (cell index, colour, shape)."""

    objects: tuple[tuple[int, str, str], ...]

    @property
    def shapes(self) -> set[str]:
        return {s for _, _, s in self.objects}


def random_scene(rng: random.Random) -> Scene:
    """One to three objects in distinct cells of a 2x2 grid; shapes skewed and co-occurring."""
    n = rng.randint(1, 3)
    cells = rng.sample(range(4), n)
    first = rng.choices(SHAPES, POPULARITY)[0]
    shapes = [first] + [COMPANION[first] if rng.random() < 0.6 else rng.choices(SHAPES, POPULARITY)[0] for _ in cells[1:]]
    return Scene(tuple(sorted((cell, rng.choice(list(COLOURS)), shape) for cell, shape in zip(cells, shapes))))


def draw(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Render a scene: light background, each object jittered inside its cell."""
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    half = size // 2
    for cell, colour, shape in scene.objects:
        x0, y0 = (cell % 2) * half, (cell // 2) * half
        r = rng.randint(half * 5 // 16, half * 7 // 16)
        cx = x0 + half // 2 + rng.randint(-1, 1)
        cy = y0 + half // 2 + rng.randint(-1, 1)
        fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
        if shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        elif shape == "diamond":
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            w = max(1, r // 3)
            d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
            d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    return img


def caption(scene: Scene) -> str:
    parts = [f"a {c} {s} at the {CELLS[cell]}" for cell, c, s in scene.objects]
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def absent_shape(scene: Scene, rng: random.Random, split: str, frequency: Counter | None = None) -> str:
    """A shape not in the scene, sampled as POPE samples negatives: ``random``; ``popular`` (the
    most frequent absent shape); ``adversarial`` (the absent shape most often seen with present ones)."""
    pool = [s for s in SHAPES if s not in scene.shapes]
    if split == "popular":
        return max(pool, key=lambda s: ((frequency or {}).get(s, 0), rng.random()))
    if split == "adversarial":
        companions = [COMPANION[s] for s in sorted(scene.shapes) if COMPANION[s] in pool]
        if companions:
            return rng.choice(companions)
    return rng.choice(pool)


def existence_question(scene: Scene, rng: random.Random, split: str, frequency: Counter | None = None) -> tuple[str, str]:
    """'Is there a <shape> in the image?' with a yes/no answer, half about absent shapes."""
    if rng.random() < 0.5:
        return f"Is there a {rng.choice(sorted(scene.shapes))} in the image?", "Yes"
    return f"Is there a {absent_shape(scene, rng, split, frequency)} in the image?", "No"


def qa_turns(scene: Scene, rng: random.Random, n_exist: int = 3) -> list[tuple[str, str]]:
    """Existence questions (negatives mixed as POPE's three splits) and one question about colour,
    position or count, shuffled."""
    turns = [existence_question(scene, rng, rng.choice(("random", "popular", "adversarial"))) for _ in range(n_exist)]
    cell, c, s = rng.choice(scene.objects)
    turns.append(rng.choice([
        (f"What color is the {s} at the {CELLS[cell]}?", c.capitalize()),
        (f"Where is the {c} {s}?", f"At the {CELLS[cell]}."),
        ("How many objects are in the image?", NUMBERS[len(scene.objects)].capitalize() + "."),
    ]))
    rng.shuffle(turns)
    return turns


TEXT_ONLY = [
    ("What shapes can the pictures show?", "Circles, squares, triangles, diamonds and crosses."),
    ("Which colors are used in the pictures?", "Red, green and blue."),
    ("How many cells does each picture have?", "Four cells in a two by two grid."),
]


def generate_shapes(out: str | Path, n_train: int = 2000, n_eval: int = 300, seed: int = 0) -> dict[str, Path]:
    """Write the shapes dataset: images, stage-1 captions, stage-2 QA, POPE-style eval questions.

    Returns the paths: ``image_folder``, ``pretrain`` and ``finetune`` (LLaVA JSON), and
    ``pope_<split>`` (POPE question files: question_id, image, text, label), ``vqa`` (questions with
    answers lists) and ``captions`` (COCO-caption format) for the held-out images.
    """
    out = Path(out)
    rng = random.Random(seed)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    pretrain, finetune = [], []
    frequency: Counter = Counter()
    for i in range(n_train):
        scene = random_scene(rng)
        frequency.update(scene.shapes)
        name = f"train_{i:05d}.png"
        draw(scene, rng).save(img_dir / name)
        pretrain.append({"id": f"cap{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": caption(scene)}]})
        conv = []
        for j, (q, a) in enumerate(qa_turns(scene, rng)):
            conv += [{"from": "human", "value": ("<image>\n" + q) if j == 0 else q}, {"from": "gpt", "value": a}]
        finetune.append({"id": f"qa{i}", "image": name, "conversations": conv})
    for k, (q, a) in enumerate(TEXT_ONLY * max(1, n_train // 100)):
        finetune.append({"id": f"text{k}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    rng.shuffle(finetune)
    paths = {"image_folder": img_dir, "pretrain": out / "pretrain.json", "finetune": out / "finetune.json"}
    atomic_write_json(paths["pretrain"], pretrain)
    atomic_write_json(paths["finetune"], finetune)

    splits: dict[str, list[dict]] = {"random": [], "popular": [], "adversarial": []}
    vqa, images, captions = [], [], []
    vqa_rng = random.Random(seed + 100)
    for i in range(n_eval):
        scene = random_scene(rng)
        name = f"eval_{i:05d}.png"
        draw(scene, rng).save(img_dir / name)
        for split, rows in splits.items():
            text, answer = existence_question(scene, rng, split, frequency)
            rows.append({"question_id": len(rows), "image": name, "text": text, "label": answer.lower()})
        cell, c, s = vqa_rng.choice(scene.objects)
        text, answer = vqa_rng.choice([(f"What color is the {s} at the {CELLS[cell]}?", c.capitalize()),
                                       ("How many objects are in the image?", NUMBERS[len(scene.objects)].capitalize() + ".")])
        vqa.append({"question_id": i, "image": name, "text": text, "answers": [answer]})
        images.append({"id": i, "file_name": name})
        captions.append({"id": i, "image_id": i, "caption": caption(scene)})
    paths["vqa"] = atomic_write_text(out / "vqa_val.jsonl", "".join(json.dumps(r) + "\n" for r in vqa))
    paths["captions"] = atomic_write_json(out / "captions_val.json", {"images": images, "annotations": captions})
    for split, rows in splits.items():
        paths[f"pope_{split}"] = out / f"pope_{split}.jsonl"
        atomic_write_text(paths[f"pope_{split}"], "".join(json.dumps(r) + "\n" for r in rows))
    return paths


def corpus(n: int = 400, seed: int = 1) -> list[str]:
    """Text the tiny tokenizer is trained on: every phrase the demo uses."""
    rng = random.Random(seed)
    # the system prompt is repeated so that BPE merges it into a few tokens: short sequences, fast demo
    lines = [SYSTEM] * 200 + ["USER: ASSISTANT:", "Describe the image briefly."] + [q + " " + a for q, a in TEXT_ONLY]
    for _ in range(n):
        scene = random_scene(rng)
        lines.append(caption(scene))
        lines += [f"USER: {q} ASSISTANT: {a}" for q, a in qa_turns(scene, rng)]
    return lines


def build_tiny_parts(out: str | Path, seed: int = 0, vision_steps: int = 150) -> dict[str, Path]:
    """Save a tiny Llama (with a tokenizer trained here) and a tiny CLIP vision tower to ``out``.

    The vision tower is pretrained for a few seconds to name the object in each cell from its
    layer -2 patch features, the way a real LLaVA run starts from a pretrained CLIP.
    Returns ``llm`` and ``vision`` folders for ``--model_name_or_path`` and ``--vision_tower``.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llava_core.compat import image_processor_class

    out = Path(out)
    build_tiny_llm(out / "llm", seed=seed)  # seeds torch: the tower below starts from the RNG state it leaves
    vcfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                            image_size=IMAGE_SIZE, patch_size=IMAGE_SIZE // 2, projection_dim=64)
    vision = CLIPVisionModel(vcfg)
    processor = image_processor_class("CLIPImageProcessor")(size={"shortest_edge": IMAGE_SIZE},
                                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    acc = pretrain_vision(vision, processor, steps=vision_steps, seed=seed)
    vision.save_pretrained(out / "vision")
    processor.save_pretrained(out / "vision")
    atomic_write_json(out / "vision" / "pretraining.json", {"steps": vision_steps, "cell_accuracy": acc})
    return {"llm": out / "llm", "vision": out / "vision"}


def build_tiny_llm(out: str | Path, seed: int = 0, pretrain_steps: int = 60) -> Path:
    """Save a tiny Llama causal LM (2 layers, hidden 128) with a byte-level BPE tokenizer trained
    here on the demo's text to ``out``, after ``pretrain_steps`` steps of language modelling;
    loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``. Returns ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    torch.manual_seed(seed)
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=1000, special_tokens=specials, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", model_max_length=512)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
        "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}\n{% else %}<|assistant|>{{ m['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
    if pretrain_steps:
        pretrain_llm(llm, tokenizer, seed=seed, steps=pretrain_steps)
    llm.save_pretrained(out)
    save_portable(tokenizer, out)
    return out


def pretrain_llm(llm: torch.nn.Module, tokenizer, seed: int, steps: int = 60, batch: int = 32) -> float:
    """A few seconds of language modelling on the demo's text (a real run starts from a pretrained LLM).

    Returns the final loss.
    """
    lines = [f"{tokenizer.bos_token}{SYSTEM} {line}{tokenizer.eos_token}" for line in corpus(n=600, seed=seed + 2)[203:]]
    opt = torch.optim.AdamW(llm.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    llm.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(lines), (batch,), generator=gen).tolist()
        enc = tokenizer([lines[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = llm(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    llm.eval()
    return loss.item()


def pretrain_vision(vision: torch.nn.Module, processor, steps: int, seed: int, batch: int = 32, pool: int = 1024) -> float:
    """Teach the tiny tower (layer -2 patch features) which object, if any, sits in each cell.

    Returns the final training accuracy.
    """
    rng = random.Random(seed + 1)
    classes = [(c, s) for c in COLOURS for s in SHAPES]
    scenes = [random_scene(rng) for _ in range(pool)]
    pixels = processor([draw(s, rng) for s in scenes], return_tensors="pt")["pixel_values"]
    target = torch.full((pool, 4), len(classes))
    for b, scene in enumerate(scenes):
        for cell, c, s in scene.objects:
            target[b, cell] = classes.index((c, s))
    head = torch.nn.Linear(vision.config.hidden_size, len(classes) + 1)
    opt = torch.optim.AdamW(list(vision.parameters()) + list(head.parameters()), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    vision.train()
    acc = 0.0
    for _ in range(steps):
        idx = torch.randint(0, pool, (batch,), generator=gen)
        feats = vision(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[-2][:, 1:]
        logits = head(feats)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        acc = (logits.argmax(-1) == target[idx]).float().mean().item()
    vision.eval()
    return acc


ASSET_VERSION = 6


def ensure_assets(assets_dir: str | Path) -> dict[str, str]:
    """The tiny model parts and shapes data, generated on first use (kept for later runs)."""
    root = Path(assets_dir).absolute()
    marker = root / "ready.json"
    if marker.is_file():
        ready = json.loads(marker.read_text())
        if ready.get("version") == ASSET_VERSION:
            return {k: str(root / v) for k, v in ready["paths"].items()}
    t0 = time.time()
    print(f"generating the tiny LLaVA parts and the shapes dataset in {root} ...", flush=True)
    parts = build_tiny_parts(root / "tiny")
    data = generate_shapes(root / "shapes")
    paths = {k: str(Path(v).relative_to(root)) for k, v in {**parts, **data, "pope": root / "shapes"}.items()}
    # relative paths: the same assets serve the host and a container that mounts runs/ elsewhere
    atomic_write_json(marker, {"version": ASSET_VERSION, "paths": paths, "seconds": round(time.time() - t0, 1)})
    return {k: str(root / v) for k, v in paths.items()}


def write_text_sample(path: str | Path, fmt: str = "alpaca", n: int = 64, seed: int = 0) -> Path:
    """A text-only instruction dataset of ``n`` records about the demo's pictures (questions and
    answers the tiny tokenizer knows), in record format ``fmt`` (``llava_core.data.formats``)."""
    from llava_core.data.formats import write_records

    rng = random.Random(seed)
    pairs = list(TEXT_ONLY)
    for _ in range(n):
        scene = random_scene(rng)
        pairs.append((f"Describe a picture of {len(scene.objects)} objects.", caption(scene)))
    records = [{"id": f"text{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
               for i, (q, a) in enumerate(pairs[:n])]
    return write_records(records, path, fmt)


def ensure_text_assets(assets_dir: str | Path) -> dict[str, str]:
    """A tiny causal LM (``llm/``, no vision part) and ``alpaca.json`` under ``assets_dir``, made on
    first use (seconds): what a text-only finetune or ``--peft`` run of the README trains."""
    root = Path(assets_dir).absolute()
    paths = {"llm": root / "llm", "alpaca": root / "alpaca.json"}
    if not (root / "ready.json").is_file():
        build_tiny_llm(paths["llm"])
        write_text_sample(paths["alpaca"])
        atomic_write_json(root / "ready.json", {"version": ASSET_VERSION})
    return {k: str(v) for k, v in paths.items()}


def tiny_asset_values(assets_dir: str | Path) -> dict[str, str]:
    """Flags that point a job at the embedded default (what ``demo_assets: true`` fills in)."""
    p = ensure_assets(assets_dir)
    return {"model_name_or_path": p["llm"], "vision_tower": p["vision"], "data_path": p["finetune"],
            "image_folder": p["image_folder"]}


if __name__ == "__main__":  # python -m llava_core.demo.assets text DIR: the tiny causal LM and alpaca.json
    import fire

    fire.Fire({"text": ensure_text_assets, "all": ensure_assets})
