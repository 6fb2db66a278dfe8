"""DPO pairs for the embedded "shapes" demo, in the two kinds HA-DPO trains on.

- description pairs: chosen = the correct caption, rejected = the caption with one hallucinated
  object added in an empty cell (half the time an "adversarial" one: its colour and its shape
  each appear in the image, not together);
- POPE-style pairs: "Is there a <colour> <shape> in the image?" about an absent object (chosen
  "No", rejected "Yes") or a present one (chosen "Yes", rejected "No"), so the model learns to
  say no to hallucinations without learning to say no to everything.

The held-out POPE question files are those of :func:`llava_core.demo_assets.generate_shapes`.
"""

from __future__ import annotations

import random
from pathlib import Path

from llava_core.demo_assets import Scene, absent_object, caption, draw, random_scene
from llava_core.io import atomic_write_json

DESCRIBE = "Describe the image briefly."


def write_dpo_pairs(image_folder: str | Path, out: str | Path, n_images: int = 400,
                    absent_share: float = 0.5, seed: int = 7) -> Path:
    """Draw ``n_images`` new scenes into ``image_folder`` (``dpo_*.png``) and write two
    preference records per image (one description pair, one POPE-style pair) to ``out``."""
    rng = random.Random(seed)
    folder = Path(image_folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_images):
        scene = random_scene(rng)
        name = f"dpo_{i:05d}.png"
        draw(scene, rng).save(folder / name)
        colour, shape = absent_object(scene, rng, adversarial=rng.random() < 0.5)
        free = rng.choice([c for c in range(4) if c not in {cell for cell, _, _ in scene.objects}])
        hallucinated = Scene(tuple(sorted(scene.objects + ((free, colour, shape),))))
        records.append(_pair(f"dpo-desc{i}", name, DESCRIBE, caption(scene), caption(hallucinated)))
        if rng.random() < absent_share:
            question, chosen, rejected = f"Is there a {colour} {shape} in the image?", "No", "Yes"
        else:
            _, c, s = rng.choice(scene.objects)
            question, chosen, rejected = f"Is there a {c} {s} in the image?", "Yes", "No"
        records.append(_pair(f"dpo-pope{i}", name, question, chosen, rejected))
    rng.shuffle(records)
    return atomic_write_json(out, records)


def _pair(rid: str, image: str, question: str, chosen: str, rejected: str) -> dict:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question}],
            "chosen": chosen, "rejected": rejected}
