"""What went wrong between nodes, counted in one place and warned about once, not per retry.

A node that cannot serve a request about a session (its home node is gone, Redis did not
carry the request, the home did not take it in time) answers the client at once with an
error its library understands; the operator must learn of it too, without a retry storm
of identical lines drowning the log. `Alarms` counts every failure by reason (the counters
`GET /api/cluster` shows, and that a metrics exporter can read) and logs one WARNING per
reason, then at most one per `interval` with the number suppressed meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("coup.cluster")


class Alarms:
    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        #: failures by reason since the node started
        self.counts: Counter[str] = Counter()
        self._last_warned: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def raise_(self, reason: str, detail: str) -> None:
        """Count one failure of kind `reason`; warn unless one was warned about recently."""
        self.counts[reason] += 1
        now = time.monotonic()
        last = self._last_warned.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] += 1
            return
        self._last_warned[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        more = f" ({suppressed} more like it in the last {self.interval:.0f} s)" if suppressed else ""
        log.warning("%s: %s%s", reason, detail, more)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)
