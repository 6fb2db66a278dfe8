"""DPO data for the embedded "shapes" demo, in the two kinds HA-DPO trains on, built on-policy.

1. :func:`write_dpo_data` draws new scenes (never the held-out POPE images) and writes, per image,
   a description pair (chosen: the correct caption; rejected: the caption with one hallucinated
   object in an empty cell, an absent shape usually seen with the present ones) and a POPE-style
   question file asking "Is there a <shape> in the image?" about every shape.
2. The model to be corrected answers those questions (an ordinary POPE eval job).
3. :func:`pairs_from_answers` turns the answers into yes/no preference pairs, as HA-DPO builds
   its POPE pairs from the model's own hallucinations: chosen is the correct answer, rejected the
   other one (the model's own answer where it was wrong), and every hallucination (yes about an
   absent shape) is repeated so the pairs weigh against saying yes to what is not there.

The held-out POPE question files are those of :func:`llava_core.demo.assets.generate_shapes`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from llava_core.demo.assets import (
    COLOURS,
    SHAPES,
    Scene,
    absent_shape,
    caption,
    draw,
    random_scene,
)
from llava_core.eval.records import read_records
from llava_core.io import atomic_write_json, atomic_write_text, load_json

DESCRIBE = "Describe the image briefly."


def write_dpo_data(image_folder: str | Path, out_dir: str | Path, n_images: int = 800,
                   seed: int = 7) -> dict[str, Path]:
    """Draw ``n_images`` new scenes into ``image_folder`` (``dpo_*.png``) and write to ``out_dir``
    ``dpo_questions.jsonl`` (POPE format: every shape asked about on every image) and
    ``dpo_description_pairs.json``. Returns their paths as ``questions`` and ``descriptions``."""
    rng = random.Random(seed)
    folder, out = Path(image_folder), Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    questions, descriptions = [], []
    for i in range(n_images):
        scene = random_scene(rng)
        name = f"dpo_{i:05d}.png"
        draw(scene, rng).save(folder / name)
        for shape in SHAPES:
            questions.append({"question_id": len(questions), "image": name,
                              "text": f"Is there a {shape} in the image?",
                              "label": "yes" if shape in scene.shapes else "no"})
        free = rng.choice([c for c in range(4) if c not in {cell for cell, _, _ in scene.objects}])
        fake = (free, rng.choice(list(COLOURS)), absent_shape(scene, rng, "adversarial"))
        hallucinated = Scene(tuple(sorted(scene.objects + (fake,))))
        descriptions.append(_pair(f"dpo-desc{i}", name, DESCRIBE, caption(scene), caption(hallucinated)))
    return {"questions": atomic_write_text(out / "dpo_questions.jsonl",
                                           "".join(json.dumps(q) + "\n" for q in questions)),
            "descriptions": atomic_write_json(out / "dpo_description_pairs.json", descriptions)}


def pairs_from_answers(questions: str | Path, answers: str | Path, out: str | Path,
                       description_pairs: str | Path | None = None, hallucination_repeat: int = 3,
                       seed: int = 7) -> dict[str, int]:
    """Write the DPO pairs for the model that gave ``answers`` (an eval job's ``pope.json`` on
    ``questions``) to ``out``, shuffled, with the ``description_pairs`` added.

    One pair per question: chosen "Yes"/"No" as labelled, rejected the other answer, or the
    model's own answer where it was wrong; a question answered yes about an absent shape gives
    ``hallucination_repeat`` copies. Returns the counts written.
    """
    if hallucination_repeat < 1:
        raise ValueError(f"hallucination_repeat must be >= 1, got {hallucination_repeat}")
    asked = {str(rec["question_id"]): rec for _, rec in read_records(questions)}
    samples = load_json(answers, dict)["samples"]
    if sorted(str(s["question_id"]) for s in samples) != sorted(asked):
        raise ValueError(f"{answers} does not answer the questions of {questions}")
    pairs, counts = [], {"questions": len(samples), "hallucinations": 0, "misses": 0}
    for s in samples:
        q = asked[str(s["question_id"])]
        chosen = q["label"].capitalize()
        rejected = "No" if chosen == "Yes" else "Yes"
        copies = 1
        if s["pred"] != q["label"]:
            rejected = s["answer"].strip() or rejected
            if q["label"] == "no":
                counts["hallucinations"] += 1
                copies = hallucination_repeat
            else:
                counts["misses"] += 1
        pairs += [_pair(f"dpo-pope{q['question_id']}-{k}", q["image"], q["text"], chosen, rejected)
                  for k in range(copies)]
    descriptions = load_json(description_pairs, list) if description_pairs else []
    records = pairs + descriptions
    random.Random(seed).shuffle(records)
    atomic_write_json(out, records)
    return {**counts, "pope_pairs": len(pairs), "description_pairs": len(descriptions),
            "pairs": len(records)}


def _pair(rid: str, image: str, question: str, chosen: str, rejected: str) -> dict:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + question}],
            "chosen": chosen, "rejected": rejected}
