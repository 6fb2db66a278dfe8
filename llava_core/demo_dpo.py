"""DPO pairs for the embedded "shapes" demo, in the two kinds HA-DPO trains on.

- description pairs: chosen = the correct caption, rejected = the caption with one hallucinated
  object added in an empty cell, of a shape that is absent but usually seen with the present ones
  (the co-occurrence hallucinations HA-DPO targets);
- POPE-style pairs: "Is there a <shape> in the image?" about an absent shape (chosen "No",
  rejected "Yes"; negatives sampled as POPE's random/popular/adversarial splits) or a present one
  (chosen "Yes", rejected "No"), so the model learns to say no to hallucinations without learning
  to say no to everything.

The held-out POPE question files are those of :func:`llava_core.demo_assets.generate_shapes`.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from llava_core.demo_assets import (COLOURS, Scene, absent_shape, caption, draw, existence_question,
                                     random_scene)
from llava_core.io import atomic_write_json

DESCRIBE = "Describe the image briefly."


def write_dpo_pairs(image_folder: str | Path, out: str | Path, n_images: int = 400,
                    seed: int = 7) -> Path:
    """Draw ``n_images`` new scenes into ``image_folder`` (``dpo_*.png``) and write two
    preference records per image (one description pair, one POPE-style pair) to ``out``."""
    rng = random.Random(seed)
    folder = Path(image_folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    frequency: Counter = Counter()
    for i in range(n_images):
        scene = random_scene(rng)
        frequency.update(scene.shapes)
        name = f"dpo_{i:05d}.png"
        draw(scene, rng).save(folder / name)
        free = rng.choice([c for c in range(4) if c not in {cell for cell, _, _ in scene.objects}])
        fake = (free, rng.choice(list(COLOURS)), absent_shape(scene, rng, "adversarial"))
        hallucinated = Scene(tuple(sorted(scene.objects + (fake,))))
        records.append(_pair(f"dpo-desc{i}", name, DESCRIBE, caption(scene), caption(hallucinated)))
        split = rng.choice(("random", "popular", "adversarial"))
        question, answer = existence_question(scene, rng, split, frequency)
        records.append(_pair(f"dpo-pope{i}", name, question, answer, "No" if answer == "Yes" else "Yes"))
    rng.shuffle(records)
    return atomic_write_json(out, records)


def _pair(rid: str, image: str, question: str, chosen: str, rejected: str) -> dict:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question}],
            "chosen": chosen, "rejected": rejected}
