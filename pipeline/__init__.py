"""The campaign pipeline: prepare an audience, dispatch, collect receipts, report costs."""

import os as _os

# Polars' allocator (jemalloc) reads this once, when Polars is first imported; Polars adds its own
# defaults in front and a value set by the operator wins. Preparation frees and allocates
# hundreds of MB per stage: with Polars' 0.5 s decay jemalloc hands freed pages back to the
# kernel only to fault them in again a moment later (a quarter of the CPU time of preparing
# 1M rows went to the kernel), and one arena per thread kept memory freed on one thread from
# being reused on another. After 1 s unused, pages go straight back (muzzy 0: MADV_DONTNEED,
# not MADV_FREE, whose pages still count as resident), which keeps the peak below Polars' own.
_os.environ.setdefault("_RJEM_MALLOC_CONF", f"narenas:{_os.cpu_count() or 1},dirty_decay_ms:1000,muzzy_decay_ms:0")
