"""Convert HA-DPO's data into DPO pairs for ``python -m jobs.submit dpo`` (the job itself: jobs.kinds.dpo).

    python -m jobs.dpo_job convert_hadpo --desc_data desc_data.json --pope_data pope_data.json \\
        --vg_image_data VG/image_data.json --out hadpo_pairs.json
"""

from __future__ import annotations

import fire

from llava_core.dpo_data import convert_hadpo

if __name__ == "__main__":
    fire.Fire({"convert_hadpo": convert_hadpo})
