"""The cyclic garbage collector of the long-running processes (API, dispatcher), set once start-up is done."""

from __future__ import annotations

import gc

# CPython runs a young-generation pass every 700 net allocations of container objects. A request in flight
# holds dozens (its job, dicts, futures), so with 64 requests in flight the API ran a pass every ~13
# requests and moved what they held into the older generations, whose full passes followed: ~25 us of CPU
# per request, 8 % of the front door's (bench: gc callbacks in the in-process loop, issue 14); at 10 000,
# ~3 us. Reference counting frees almost everything at once anyway; only garbage in cycles waits longer.
GEN0_THRESHOLD = 10_000


def settle() -> None:
    """What start-up loaded (modules, FastAPI's routes and models, pydantic schemas, clients) lives as long as
    the process: out of the collector's sight, so a full pass walks only what the work made since; and the
    young generation collected every GEN0_THRESHOLD net allocations instead of 700."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)
