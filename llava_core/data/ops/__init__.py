"""Data operations over LLaVA-style datasets, what ``python -m jobs.submit data --op OP`` runs on
every rank: ``recaption`` (:mod:`.caption`), ``clip_filter`` (:mod:`.clip`), ``dedup``
(:mod:`.dedup`), ``convert`` and ``mix`` (on ``llava_core.data.formats``). The items are scored in
shards spread over the ranks and saved whole (:mod:`.shards`: resumable), then rank 0 decides, writes
the new dataset, ``scores.jsonl`` and the report (:mod:`.report`). Settings: :class:`.config.DataConfig`;
entry point: :func:`.run.run_op`.
"""
