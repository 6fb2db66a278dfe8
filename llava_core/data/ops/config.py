"""The settings of one data job (what ``python -m jobs.submit data`` and :func:`llava_core.data.ops.run.run_op` take)."""
from __future__ import annotations

from dataclasses import dataclass, field

from llava_core.config import Settings

OPS = ("recaption", "clip_filter", "dedup", "convert", "mix")
CAPTION_MODES = ("replace", "keep", "add")
SCORE_BY = ("sample", "turn_min", "turn_mean")
IMAGE_HASHES = ("phash", "dhash", "whash", "ahash")
OUTPUT_NAME = "data.json"
"""The dataset a data job writes in its job directory (``.jsonl`` when ``--out_format`` asks for lines)."""


@dataclass
class DataConfig(Settings):
    """One data operation over a dataset: recaption, clip_filter, dedup, convert or mix."""

    op: str = ""
    """recaption (new captions or answers from a model), clip_filter (image-text similarity),
    dedup (exact and near-duplicate images, duplicate texts), convert (another record format),
    mix (several datasets sampled by ratio)."""
    data_path: str = ""
    """The dataset: LLaVA, data-juicer, sharegpt, OpenAI messages or alpaca JSON/JSONL; several
    comma-separated files (mix: one per source)."""
    data_format: str = "auto"
    """The input's record format (auto: detected per file; llava_core.data.formats)."""
    image_folder: str = ""
    """Folder the records' image paths are relative to."""
    out_format: str = "llava"
    """The format the new dataset is written in: llava, datajuicer, sharegpt, messages, alpaca."""
    out_name: str = OUTPUT_NAME
    """File name of the new dataset in the job directory (``.jsonl``: one record per line)."""
    model: str = ""
    """recaption: a run or HF folder of a LLaVA (this project's runs), a BLIP-2 folder or hub id;
    clip_filter: a CLIP or SigLIP folder or hub id."""
    prompt: str = "Describe the image briefly."
    """recaption: the instruction the model answers for each image."""
    version: str = ""
    """recaption with a LLaVA: the prompt format (default: the one the model was trained with)."""
    num_candidates: int = 1
    """recaption: captions generated per image (beam search, or sampling with --temperature > 0)."""
    caption_mode: str = "replace"
    """recaption: replace (the answer becomes the first candidate), keep (the original text kept,
    candidates stored in the record's ``captions``), add (the original kept and one new sample per
    candidate added beside it)."""
    max_new_tokens: int = 48
    """recaption: longest caption in tokens."""
    temperature: float = 0.0
    """recaption: 0 greedy (beam search for several candidates), else sampling."""
    batch_size: int = 16
    """Images per model call on each rank."""
    score_by: str = "sample"
    """clip_filter: sample (the image against all answers of the sample), turn_min or turn_mean
    (each question-answer turn scored on its own; the sample's score is their minimum or mean)."""
    threshold: float | None = None
    """clip_filter: keep samples scoring at least this (data-juicer's LLaVA recipe: 0.203 with
    CLIP ViT-B/16); dedup: the Hamming distance at or under which two images are near-duplicates."""
    keep_top: float | None = None
    """clip_filter: keep this fraction of the samples, the best scoring (instead of --threshold)."""
    image_hash: str = "phash"
    """dedup: the perceptual hash (imagehash): phash, dhash, whash, ahash."""
    dedup_images: bool = True
    """dedup: drop samples whose image is a copy (content hash) or near copy of an earlier one."""
    dedup_texts: bool = True
    """dedup: drop samples whose whole text (every turn, case and spaces normalised) is an earlier one's."""
    ratios: list[float] = field(default_factory=list)
    """mix: one weight per file of --data_path (default: all 1)."""
    size: int = 0
    """mix: samples in the mixture (0: as many as the ratios allow without repeating a sample)."""
    seed: int = 0
    """mix: the sampling seed; recaption: the sampling seed with --temperature > 0."""
    shard_size: int = 64
    """Samples per shard: the unit spread over the ranks and the unit of resumption."""
    dtype: str = "auto"
    """Model dtype: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16."""
    on_bad_sample: str = "fail"
    """A malformed record or a missing/corrupt image at submit: fail the job, or skip it (counted
    in the report as dropped)."""
    check_images: str = "decode"
    """How images are checked at submit: exists, open, verify, decode."""
    examples: int = 8
    """Dropped samples shown in the report per reason."""
