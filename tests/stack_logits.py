"""``python -m tests.stack_logits MODEL IMAGE OUT.pt``: the logits of one fixed image question, as this
environment's library stack loads MODEL through llava_core (for the cross-stack checkpoint test)."""
from __future__ import annotations

import sys

import torch
from PIL import Image

from llava_core.model.build import load_for_inference


def main(model_dir: str, image: str, out: str) -> None:
    """Write ``{"logits": ..., "transformers": version}`` of the prompt below to ``out``."""
    import transformers

    model, processor = load_for_inference(model_dir)
    inputs = processor(text="USER: <image>\nIs there a circle? ASSISTANT:", images=Image.open(image).convert("RGB"),
                       return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save({"logits": logits, "transformers": transformers.__version__}, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
