"""The repository's read cache never keeps what a concurrent write made stale."""
from vws.repository.workspaces import ReadCache


def test_a_write_invalidates_and_a_read_that_raced_with_it_is_not_kept():
    cache = ReadCache()
    generation = cache.generation           # a reader starts...
    cache.invalidate("workspaces/wa")       # ...a write commits meanwhile...
    cache.put("workspaces/wa", b"old", generation)   # ...the reader's old row is dropped
    assert cache.get("workspaces/wa") is None
    cache.put("workspaces/wa", b"new", cache.generation)
    assert cache.get("workspaces/wa") == b"new"
    cache.invalidate("workspaces/wa")
    assert cache.get("workspaces/wa") is None


def test_entries_age_out(monkeypatch):
    cache = ReadCache()
    now = [100.0]
    monkeypatch.setattr("vws.repository.workspaces.time.monotonic", lambda: now[0])
    cache.put("workspaces/wa", b"x", cache.generation)
    now[0] += ReadCache.MAX_AGE + 0.01
    assert cache.get("workspaces/wa") is None
