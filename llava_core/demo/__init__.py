"""The embedded default: the generated "shapes" data, the tiny model's parts, and the demo's preference pairs."""
