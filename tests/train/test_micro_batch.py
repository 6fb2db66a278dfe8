"""``llava_core.train.micro_batch``: the micro batch chosen from the memory estimate at a fixed number
of samples per rank and optimizer step."""
from __future__ import annotations

from llava_core.train.memory import JobShape, estimate_peak_memory
from llava_core.train.micro_batch import choose_micro_batch, micro_batch_candidates, shape_at
from llava_core.train.zero_choice import ZeroSetup

# The 1.1B benchmark model (bench.models "1b"): CLIP-L + Llama 1.1B, stage 2, compiled, no DeepSpeed.
SHAPE = JobShape(vision_params=303_507_456, projector_params=6_295_552, llm_params=1_100_310_528, hidden=2048,
                 intermediate=5632, layers=22, kv_dim=256, vocab=32064, train="full", tokens=0, logit_tokens=0,
                 compiled=True)
LENGTHS = [885] * 50 + [1500] * 5 + [-300] * 3  # negative: text-only samples
NONE = ZeroSetup(0, False)


def _peak(micro_batch: int, layers: int = 0) -> float:
    shape = shape_at(SHAPE, LENGTHS, micro_batch, 128 // micro_batch, packed=True)
    return estimate_peak_memory(JobShape(**{**shape.__dict__, "checkpointed_layers": layers})).total_gib


def test_candidates_divide_the_samples_per_rank():
    assert micro_batch_candidates(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert micro_batch_candidates(12) == [1, 2, 3, 4, 6, 12]


def test_the_largest_that_fits_keeps_micro_batch_times_accumulation():
    budget = (_peak(32) + _peak(64)) / 2
    choice = choose_micro_batch(SHAPE, 128, LENGTHS, True, NONE, budget, auto_checkpointing=True)
    assert (choice.micro_batch, choice.accumulation, choice.checkpointed_layers, choice.fits) == (32, 4, 0, True)
    assert all(o.micro_batch * o.accumulation == 128 for o in choice.options)
    assert [o.micro_batch for o in choice.options if not o.fits] == [] and choice.options[-1].checkpointed_layers > 0
    assert "32 x 4: the largest that fits" in choice.reason() and "  64 x 2: " in choice.reason()


def test_a_larger_micro_batch_is_not_bought_with_checkpointing():
    budget = (_peak(16) + _peak(32)) / 2  # 32 fits only with some layers checkpointed, 16 without
    choice = choose_micro_batch(SHAPE, 128, LENGTHS, True, NONE, budget, auto_checkpointing=True)
    by_batch = {o.micro_batch: o for o in choice.options}
    assert by_batch[32].fits and by_batch[32].checkpointed_layers > 0
    assert (choice.micro_batch, choice.checkpointed_layers) == (16, 0)


def test_when_even_the_smallest_needs_checkpointing_the_largest_with_as_many_layers():
    budget = _peak(1, 8) + 0.01
    choice = choose_micro_batch(SHAPE, 128, LENGTHS, True, NONE, budget, auto_checkpointing=True)
    smallest = choice.options[0].checkpointed_layers
    assert 0 < smallest == choice.checkpointed_layers
    assert all(o.checkpointed_layers > smallest or not o.fits for o in choice.options if o.micro_batch > choice.micro_batch)


def test_without_auto_checkpointing_the_shapes_own_layers_count():
    every = JobShape(**{**SHAPE.__dict__, "checkpointed_layers": 22})
    choice = choose_micro_batch(every, 128, LENGTHS, True, NONE, _peak(32, 22) + 0.01, auto_checkpointing=False)
    assert (choice.micro_batch, choice.checkpointed_layers) == (32, 22)


def test_nothing_fits_and_no_gpu():
    tight = choose_micro_batch(SHAPE, 128, LENGTHS, True, NONE, 5.0, auto_checkpointing=True)
    assert not tight.fits and (tight.micro_batch, tight.accumulation) == (1, 128) and "nothing fits" in tight.reason()
    free = choose_micro_batch(SHAPE, 128, LENGTHS, True, NONE, None, auto_checkpointing=True)
    assert (free.micro_batch, free.accumulation) == (128, 1) and "no GPU" in free.reason()


def test_the_zero_setup_changes_the_estimate():
    offload = choose_micro_batch(SHAPE, 128, LENGTHS, True, ZeroSetup(2, True), None, False)
    plain = choose_micro_batch(SHAPE, 128, LENGTHS, True, NONE, None, False)
    # the optimizer on the CPU (and bf16 weights) leaves more room for activations at every micro batch
    assert all(o.peak_gib + 10 < p.peak_gib for o, p in zip(offload.options, plain.options, strict=True))


def test_the_share_left_to_the_estimate_follows_the_ranks_allocator(monkeypatch):
    from jobs.zero_choice import ranks_memory_share
    from llava_core.train.memory import AUTO_CHECKPOINT_SHARE, EXPANDABLE_SEGMENTS_SHARE, memory_share

    assert memory_share(None) == memory_share("max_split_size_mb:512") == AUTO_CHECKPOINT_SHARE
    assert memory_share("max_split_size_mb:512, expandable_segments:True") == EXPANDABLE_SEGMENTS_SHARE
    assert memory_share("expandable_segments:False") == AUTO_CHECKPOINT_SHARE
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    # the cuda profile turns expandable segments on for every rank; rocm, dcu and cpu leave the allocator alone
    assert ranks_memory_share("cuda") == EXPANDABLE_SEGMENTS_SHARE
    assert ranks_memory_share("dcu") == ranks_memory_share("cpu") == AUTO_CHECKPOINT_SHARE
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")  # the user's setting wins
    assert ranks_memory_share("cuda") == AUTO_CHECKPOINT_SHARE
