"""What a sandbox uses, in words: the admin page's figures."""

from __future__ import annotations

from jupyter_sac.service.usage_text import human_bytes


def test_sizes_read_the_same_on_the_admin_page_as_in_the_sidebar() -> None:
    """The sidebar's formatBytes (labextension/test/logic.test.ts) and the admin
    page's human_bytes follow one rule: whole numbers from 100 up and for bytes."""
    assert [human_bytes(n) for n in (0, 1023, 1536, 2**30, 10 * 2**30, 150 * 2**20)] == [
        "0 B", "1023 B", "1.5 KiB", "1.0 GiB", "10.0 GiB", "150 MiB",
    ]  # fmt: skip
    assert human_bytes(None) == "—"
