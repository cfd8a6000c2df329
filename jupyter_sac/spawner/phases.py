"""How long each step of an agent's start took: one line in the hub log per start.

The spawner reports its steps on the spawn page already; this adds their
durations, so an operator (and ``bench/spawn.py``) sees where a start spends its
time. The wall-clock instants of the start's beginning and end are in the line
too, so that the hub's own steps around ``Spawner.start`` (its bookkeeping
before, its readiness check and proxy route after) can be told apart by whoever
timed the request that started the agent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

# The hub log line's prefix (bench/spawn.py looks for it).
LOG_PREFIX = "spawn phases"


@dataclass
class SpawnPhases:
    """Durations of a start's steps, in the order they ended."""

    started_at: float = field(default_factory=time.time)
    durations: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)

    def mark(self, phase: str) -> None:
        """The step ``phase`` ended now (it began where the previous one ended)."""
        now = time.monotonic()
        self.durations[phase] = self.durations.get(phase, 0.0) + now - self._last
        self._last = now

    def elapsed(self) -> float:
        """Seconds from the start's beginning to the end of its last step."""
        return sum(self.durations.values())

    def record(self) -> dict[str, float]:
        """The start as one JSON-able record: seconds per step, and the wall-clock
        instants (``time.time()``) at which it began and ended."""
        return {
            "started_at": round(self.started_at, 4),
            "ended_at": round(self.started_at + self.elapsed(), 4),
            **{name: round(seconds, 4) for name, seconds in self.durations.items()},
        }

    def log_line(self, who: str) -> str:
        return f"{LOG_PREFIX} {who} {json.dumps(self.record())}"


def parse_log_line(line: str) -> tuple[str, dict[str, float]] | None:
    """(who, record) from a hub log line written by ``SpawnPhases.log_line``."""
    _, found, rest = line.partition(LOG_PREFIX + " ")
    if not found:
        return None
    who, _, record = rest.partition(" ")
    try:
        return who, json.loads(record)
    except ValueError:
        return None
