"""Memory for decoding received data sets: a budget per instance and one for the node (issue 28).

A Deflated Explicit VR Little Endian data set (PS3.5 A.5) is inflated in steps of
:data:`INFLATE_STEP` bytes, each step taken from the budget before it is produced, so a deflate
bomb is stopped at the budget, not after it has inflated; compressed pixel data (RLE, JPEG, JPEG-LS,
JPEG 2000) is charged Rows × Columns × Frames × Samples per Pixel × Bits Allocated / 8 (what decoding
it produces, PS3.5 §8.2) before it is decoded. Both are charged :data:`COPIES` times, the copies
held at the peak, so the budget is the memory really used. An instance over ``[limits]
decoded_bytes_per_instance``, or one that would take all associations together over
``decoded_bytes_per_node``, is refused with 0xA700 (Out of Resources) and an Error Comment that says
which budget (docs/conformance.md), before anything is acknowledged. What an instance took is given
back when its checks end (:meth:`DecodeBudget.hold`).

API::

    budget = DecodeBudget(per_instance=256 << 20, per_node=1 << 30)
    with budget.hold() as hold:
        hold.take(nbytes, "the inflated data set")   # raises Refusal(0xA700, ...) over either budget
    budget.in_use                                      # bytes held by all instances now
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dicomnode.dicom.status import Status

INFLATE_STEP = 1 << 20  # inflate this much at a time
#: Each decoded byte is held twice at the peak: the inflated data set and the element values read from
#: it (pydicom copies them out), or the decoder's output and the pixel array built from it. Measured
#: (``benchmarks/decode_memory.py``): the node's peak RSS grows by about twice the bytes decoded at once.
COPIES = 2


class BudgetExceeded(Exception):
    """Decoding would exceed a memory budget; ``reason`` leads with what (an Error Comment)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.status = Status.OUT_OF_RESOURCES
        self.reason = reason


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB"


class Hold:
    """What one instance holds of a :class:`DecodeBudget`."""

    def __init__(self, budget: DecodeBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, count: int, what: str) -> None:
        """Hold ``count`` more bytes for ``what``; :class:`BudgetExceeded` over either budget."""
        budget = self._budget
        if self.held + count > budget.per_instance:
            raise BudgetExceeded(f"decoding budget per instance exceeded: {what} needs over "
                                 f"{_mib(self.held + count)}, limit {_mib(budget.per_instance)}")
        with budget._lock:
            if budget.in_use + count > budget.per_node:
                raise BudgetExceeded(f"node decoding budget in use, retry later: {what} needs "
                                     f"{_mib(self.held + count)}, {_mib(budget.in_use)} of {_mib(budget.per_node)} held")
            budget.in_use += count
        self.held += count

    def release(self) -> None:
        with self._budget._lock:
            self._budget.in_use -= self.held
        self.held = 0


class DecodeBudget:
    """The per-instance and per-node budgets (``[limits]``), shared by every association of a receiver."""

    def __init__(self, per_instance: int, per_node: int) -> None:
        self.per_instance = per_instance
        self.per_node = per_node
        self.in_use = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[Hold]:
        """A hold for one instance's checks, given back when the block ends."""
        hold = Hold(self)
        try:
            yield hold
        finally:
            hold.release()


#: No limit beyond the ceiling of :mod:`dicomnode.dicom.validate` (tools and tests that check files).
UNLIMITED = DecodeBudget(per_instance=1 << 62, per_node=1 << 62)
