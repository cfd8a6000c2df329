"""What a sandbox uses, in words: the admin page's figures."""

from __future__ import annotations

from jupyter_sac.service.usage_text import human_bytes, usage_notes
from jupyter_sac.store import SandboxUsage


def test_sizes_read_the_same_on_the_admin_page_as_in_the_sidebar() -> None:
    """The sidebar's formatBytes (labextension/test/logic.test.ts) and the admin
    page's human_bytes follow one rule: whole numbers from 100 up and for bytes."""
    assert [human_bytes(n) for n in (0, 1023, 1536, 2**30, 10 * 2**30, 150 * 2**20)] == [
        "0 B", "1023 B", "1.5 KiB", "1.0 GiB", "10.0 GiB", "150 MiB",
    ]  # fmt: skip
    assert human_bytes(None) == "—"


def test_notes_say_why_figures_are_missing_and_count_restarts() -> None:
    """The same words as the sidebar's usageNotes (labextension/test/logic.test.ts)."""
    running = SandboxUsage(running=True, restarts=2, unavailable="no metrics API")
    assert usage_notes(running) == [
        "its server crashed and was restarted 2 times since it started",
        "live figures unavailable: no metrics API",
    ]
    assert usage_notes(SandboxUsage(running=True, restarts=1)) == [
        "its server crashed and was restarted once since it started"
    ]
    # A healthy agent, a stopped one and one never sampled: nothing to say.
    assert usage_notes(SandboxUsage(running=True, restarts=0)) == []
    assert usage_notes(SandboxUsage(running=False, restarts=3, unavailable="x")) == []
    assert usage_notes(None) == []
