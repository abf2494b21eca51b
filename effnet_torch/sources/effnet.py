"""effnet's own layout: the twin contract itself, so every module keeps its name.

Listed as a source so that an effnet checkpoint without a header (a bare twin `state_dict`) imports like any
other library's (docs/design.md, "Weight sources").
"""

from __future__ import annotations

from .base import WeightSource, native_preprocessing

SOURCE = WeightSource(
    name="effnet",
    order=9,
    module_name=lambda spec, m, repeat: m.name,
    conventions="effnet",
    preprocessing=native_preprocessing,
)
