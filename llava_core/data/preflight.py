"""Pre-flight validation at scale: ``llava_core.data``'s checks over every core, streamed, cached.

The records are streamed from the files (never all in memory) and sent in chunks to worker
processes; a record goes to the worker that owns its first image (by a hash of the path), so each
image file is decoded once even when many records share it. A progress bar shows records/s and
the ETA. The result (good samples, their lengths, the problems) is cached in a JSON file named by
a hash of everything it depends on: the data files' size, mtime and content hash, the tokenizer,
prompt format, ``model_max_length``, image-token count, image folder, check level and this
module's version; a cached result is used only while every image it looked at keeps its size,
mtime and inode change time (ctime: any rewrite moves it, even one that puts the size and mtime
back). An unchanged dataset so re-validates in the time of hashing its files. A cache folder that
cannot be used (not writable, not a folder) is warned about and the data validated without it.
"""
from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import queue
import traceback
from array import array
from pathlib import Path
from typing import Any

from llava_core.data.encoding import Encoder
from llava_core.data.formats import open_records
from llava_core.data.records import RecordStream, data_files
from llava_core.data.validation import Checker, Problem, ValidationReport, check_level
from llava_core.io import atomic_write_text, load_json

log = logging.getLogger(__name__)
VERSION = 2  # of the checks and the cache's layout: a change invalidates every cached result (2: image ctime)
CHUNK = 256  # records per task
SMALL = 4 << 20  # bytes of data below which one process is faster than starting workers


def default_cache_dir() -> Path:
    """``$LLAVA_CLUSTER_CACHE/preflight``, else ``$XDG_CACHE_HOME/llava-cluster/preflight``
    (``~/.cache/llava-cluster/preflight``)."""
    root = os.environ.get("LLAVA_CLUSTER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-cluster"
    return Path(root) / "preflight"


def tokenizer_identity(tokenizer) -> str:
    """A hash of what tokenization depends on: the tokenizer's full definition (vocabulary,
    merges, normalizer, added tokens), its class and chat template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([str(getattr(tokenizer, "chat_template", None)), str(tokenizer.special_tokens_map),
                         getattr(tokenizer, "legacy", None)]).encode())
    return h.hexdigest()


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size, mtime and a BLAKE2 hash of the contents."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": h.hexdigest()}


def cache_inputs(data_path: str, encoder: Encoder | None, image_folder: str | None, check_images: str, fmt: str,
                 allow_outside: bool, data_format: str = "auto") -> dict[str, Any]:
    """Everything a validation result depends on."""
    return {"version": VERSION, "files": [file_identity(p) for p in data_files(data_path)], "data_format": data_format,
            "tokenizer": tokenizer_identity(encoder.tokenizer) if encoder else None,
            "format": encoder.fmt if encoder else fmt, "model_max_length": encoder.max_length if encoder else None,
            "n_image_tokens": encoder.image_identity if encoder else None,
            "image_folder": str(Path(image_folder).resolve()) if image_folder else None,
            "check_images": check_images, "allow_outside": allow_outside}


def _images_unchanged(folder: str | None, images: list[list]) -> int:
    """How many of the cached (name, size, mtime_ns, ctime_ns) image files differ now."""
    changed = 0
    for name, size, mtime, ctime in images:
        try:
            st = os.stat(os.path.join(folder, name))
            changed += (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (size, mtime, ctime)
        except OSError:
            changed += size != -1
    return changed


def _check_chunk(check: Checker, items: list[tuple]) -> tuple[list, list]:
    """(global index, signed length or Problem) for each item of a chunk, and the images checked."""
    from llava_core.data.records import Record

    first = len(check.checked)
    out = [(g, check(Record(source, index, data))) for g, source, index, data in items]
    return out, check.checked[first:]


def _worker(check: Checker, inbox, outbox) -> None:
    while (task := inbox.get()) is not None:
        chunk_id, items = task
        try:
            outbox.put((chunk_id, *_check_chunk(check, items)))
        except BaseException:  # reported to the parent, which raises it naming the chunk
            outbox.put((chunk_id, None, traceback.format_exc()))
            return


class _Results:
    """The per-record outcomes as they come back (in any order), kept compactly."""

    def __init__(self):
        self.lengths = array("i")
        self.ok = bytearray()
        self.problems: dict[int, Problem] = {}
        self.images: list[tuple[str, int, int, int]] = []
        self.done = 0

    def add(self, out: list, checked: list) -> None:
        for g, n in out:
            if g >= len(self.ok):
                grow = max(g + 1 - len(self.ok), len(self.ok))
                self.ok.extend(bytes(grow))
                self.lengths.extend(array("i", bytes(4 * grow)))
            if isinstance(n, Problem):
                self.problems[g] = n
            else:
                self.ok[g], self.lengths[g] = 1, n
        self.images += checked
        self.done += len(out)

    def report(self, total: int, with_lengths: bool) -> ValidationReport:
        good = [g for g in range(total) if self.ok[g]]
        lengths = [self.lengths[g] for g in good] if with_lengths else []
        return ValidationReport(total, good, lengths, [self.problems[g] for g in sorted(self.problems)])


def _progress(enabled: bool | None):
    from tqdm import tqdm

    return tqdm(total=None, unit="rec", desc="pre-flight", disable=(None if enabled is None else not enabled),
                dynamic_ncols=True, smoothing=0.1)


def _estimate_total(bar, stream: RecordStream, parsed: int) -> None:
    if stream.bytes_read:
        bar.total = max(parsed, round(parsed * stream.total_bytes / stream.bytes_read))


def preflight(data_path: str, encoder: Encoder | None, image_folder: str | None, check_images: str = "decode",
              fmt: str = "vicuna_v1", allow_outside: bool = False, workers: int | None = None,
              cache: str | os.PathLike | bool | None = None, progress: bool | None = None,
              data_format: str = "auto") -> ValidationReport:
    """Validate every record of ``data_path`` (the checks of ``llava_core.data.validate``) on
    ``workers`` processes (None: every core this process may use; one for a small dataset).
    Records of ``data_format`` are converted to LLaVA's form first (``llava_core.data.formats``).

    ``cache``: a folder for cached results, None for :func:`default_cache_dir`, False for none.
    ``progress``: the bar on stderr (None: only on a terminal). The report's ``cache`` is the
    cache file it came from or was written to.
    """
    check_level(check_images)
    folder = cache if cache not in (None, True, False) else default_cache_dir() if cache is not False else None
    path = None
    if folder is not None:
        inputs = cache_inputs(data_path, encoder, image_folder, check_images, fmt, allow_outside, data_format)
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
        path = Path(folder) / f"{key}.json"
        try:
            found = path.is_file()
        except OSError as e:  # e.g. a folder on the way that this user may not enter
            log.warning("pre-flight cache %s unusable (%s): validating without the cache", folder, e)
            found, path = False, None
        if found:
            try:
                cached = load_json(path, dict)
                changed = _images_unchanged(image_folder, cached["images"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("pre-flight cache %s unreadable (%s): validating again", path, e)
            else:
                if not changed:
                    return ValidationReport.from_state(cached["report"], str(path))
                log.warning("%d image files changed since the cached pre-flight %s: validating again", changed, path)
    check = Checker(encoder, image_folder, check_images, fmt, allow_outside)
    stream = open_records(data_path, data_format)
    if workers is None:
        workers = 1 if stream.total_bytes < SMALL else len(os.sched_getaffinity(0))
    results = _Results()
    total = _run(stream, check, max(1, workers), results, progress)
    report = results.report(total, encoder is not None)
    if path is not None:
        state = {"inputs": inputs, "report": report.state(), "images": results.images}
        try:
            atomic_write_text(path, json.dumps(state, separators=(",", ":")))
            report.cache = str(path)
        except OSError as e:  # not writable, not a folder, full: the result stands, uncached
            log.warning("pre-flight cache %s unusable (%s): validated without the cache "
                        "(set LLAVA_CLUSTER_CACHE to a writable folder to cache it)", folder, e)
    return report


def _run(stream: RecordStream, check: Checker, workers: int, results: _Results, progress: bool | None) -> int:
    """Feed the records to ``workers`` processes (or this one), collecting into ``results``; the
    record count."""
    if workers == 1:
        bar = _progress(progress)
        total, items = 0, []
        for rec in stream:
            items.append((total, rec.source, rec.index, rec.data))
            total += 1
            if len(items) == CHUNK:
                results.add(*_check_chunk(check, items))
                items = []
                _estimate_total(bar, stream, total)
                bar.update(CHUNK)
        results.add(*_check_chunk(check, items))
        bar.total = total
        bar.update(len(items))
        bar.close()
        return total

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    inboxes = [ctx.Queue(maxsize=8) for _ in range(workers)]
    outbox = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(check, inbox, outbox), daemon=True) for inbox in inboxes]
    gc.freeze()  # what exists now is left alone by the workers' garbage collections: its pages stay shared after the fork
    try:
        for p in procs:
            p.start()
    finally:
        gc.unfreeze()
    bar = _progress(progress)  # after the forks (its monitor thread)
    pending: dict[int, tuple[int, int]] = {}  # chunk -> (worker, records)
    ids = itertools.count()

    def check_alive() -> None:
        """Raise if a worker that still owes results is gone (one that finished its share and
        exited is not an error, whatever the others are still doing)."""
        owing = {w for w, _ in pending.values()}
        dead = [w for w in owing if not procs[w].is_alive()]
        if dead:
            drain()  # what it sent before it went
            for w in dead:
                if any(o == w for o, _ in pending.values()):
                    raise RuntimeError(f"pre-flight worker {procs[w].pid} died (exit code {procs[w].exitcode})")

    def take(chunk_id: int, out, checked) -> None:
        if out is None:
            raise RuntimeError(f"pre-flight worker failed:\n{checked}")
        results.add(out, checked)
        bar.update(pending.pop(chunk_id)[1])

    def drain() -> None:
        while pending:
            try:
                take(*outbox.get(block=False))
            except queue.Empty:
                return

    def collect(block: bool) -> None:
        while pending:
            try:
                item = outbox.get(block=block, timeout=1.0)
            except queue.Empty:
                check_alive()
                if not block:
                    return
                continue
            take(*item)

    def put(w: int, task) -> None:
        while True:
            try:
                inboxes[w].put(task, timeout=1.0)
                return
            except queue.Full:
                collect(block=False)
                if not procs[w].is_alive():
                    raise RuntimeError(f"pre-flight worker {procs[w].pid} died (exit code {procs[w].exitcode})") from None

    def send(w: int, items: list) -> None:
        chunk_id = next(ids)
        pending[chunk_id] = (w, len(items))
        put(w, (chunk_id, items))

    try:
        buffers: list[list] = [[] for _ in range(workers)]
        total = 0
        for rec in stream:
            try:
                first = rec.images[:1]
            except ValueError:  # an odd 'image' field: any worker reports it
                first = []
            w = hash(first[0]) % workers if first else total % workers
            buffers[w].append((total, rec.source, rec.index, rec.data))
            total += 1
            if len(buffers[w]) == CHUNK:
                send(w, buffers[w])
                buffers[w] = []
                _estimate_total(bar, stream, total)
                collect(block=False)
        for w, items in enumerate(buffers):
            if items:
                send(w, items)
        bar.total = total
        for w in range(workers):
            put(w, None)
        collect(block=True)
        return total
    finally:
        bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
