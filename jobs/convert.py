"""Data conversions into what the jobs train on (the jobs themselves validate and train it):

    python -m jobs.convert format alpaca.json --out llava.json          # alpaca/sharegpt/messages -> LLaVA JSON
    python -m jobs.convert format llava.json --out chat.jsonl --to messages   # and back, any format
    python -m jobs.convert convert_hadpo --desc_data desc_data.json --pope_data pope_data.json \\
        --vg_image_data VG/image_data.json --out hadpo_pairs.json     # HA-DPO's data -> DPO pairs

``format`` reads llava, alpaca, sharegpt, OpenAI messages or data-juicer records (JSON list or
JSONL; ``--data_format auto`` detects the format per file, as training does) and writes them in
``--to`` (default llava: what training converts them to, to look at before a run); ``.jsonl``
outputs get one record per line. A record that does not convert stops it with the file and record.
"""

from __future__ import annotations

import fire

from llava_core.data.formats import convert_file
from llava_core.data.preference import convert_hadpo

if __name__ == "__main__":
    fire.Fire({"format": convert_file, "convert_hadpo": convert_hadpo})
