"""The model science: data, model, train, eval and the demo's assets (docs/architecture.md maps them)."""
from llava_core.moved_modules import MOVED, keep_old_paths

keep_old_paths(MOVED)
