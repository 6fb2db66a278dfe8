"""Data conversions into what the jobs train on (the jobs themselves validate and train it):

    python -m jobs.convert convert_hadpo --desc_data desc_data.json --pope_data pope_data.json \\
        --vg_image_data VG/image_data.json --out hadpo_pairs.json     # HA-DPO's data -> DPO pairs
"""

from __future__ import annotations

import fire

from llava_core.data.preference import convert_hadpo

if __name__ == "__main__":
    fire.Fire({"convert_hadpo": convert_hadpo})
