"""The manager's image cache: one verified copy per digest; a copy that does not match its
digest is discarded and retried, and after the last attempt nothing is kept or booted."""
from __future__ import annotations

import pytest

from vws.common import errors, model
from vws.manager.backends.vm import images
from vws.manager.backends.vm.images import ImageCache
from vws.native import copysum


def image_file(tmp_path, data: bytes):
    src = tmp_path / "src.img"
    src.write_bytes(data)
    digest = copysum.digest_file(str(src)).digest
    f = model.ImageFile(model.FileRole.DISK, model.FileFormat.RAW, len(data), digest, str(src))
    return model.Image("images/t", model.ImageBoot.DISK, [f]), f


def test_a_file_is_copied_once_verified_and_read_only(tmp_path):
    image, f = image_file(tmp_path, b"x" * 5_000_000)
    cache = ImageCache(tmp_path / "cache")
    seen = []
    path = cache.ensure(image, f, lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == b"x" * 5_000_000 and path.name == f.digest.split(":")[1]
    assert path.stat().st_mode & 0o222 == 0
    assert seen[-1] == (5_000_000, 5_000_000)
    (tmp_path / "src.img").unlink()  # cached: the store is not read again
    assert cache.ensure(image, f) == path


def test_a_damaged_source_is_retried_then_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    image, f = image_file(tmp_path, b"y" * 100_000)
    (tmp_path / "src.img").write_bytes(b"z" * 100_000)  # the store's copy changed after it was added
    calls = []
    real = copysum.copy_file
    monkeypatch.setattr(images.copysum, "copy_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = ImageCache(tmp_path / "cache", attempts=3)
    with pytest.raises(errors.FailedPrecondition, match="did not match its digest in 3 copies"):
        cache.ensure(image, f)
    assert len(calls) == 3
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_source_names_the_store(tmp_path):
    image, f = image_file(tmp_path, b"q")
    (tmp_path / "src.img").unlink()
    with pytest.raises(errors.FailedPrecondition, match="not in the image store"):
        ImageCache(tmp_path / "cache").ensure(image, f)


@pytest.mark.requires(__import__("os").geteuid() != 0, "needs root: mounts a tmpfs")
def test_a_full_cache_disk_is_resource_exhausted_and_nothing_is_kept(tmp_path):
    """copysum's ENOSPC came back as OSError: INTERNAL."""
    import subprocess
    image, f = image_file(tmp_path, b"w" * 3_000_000)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "vws-test-cache", str(cache_dir)], check=True)
    try:
        with pytest.raises(errors.ResourceExhausted) as e:
            ImageCache(cache_dir).ensure(image, f)
        assert f"host's disk holding {cache_dir}" in e.value.message and "images/t" in e.value.message
        assert list(cache_dir.iterdir()) == []
    finally:
        subprocess.run(["umount", "--lazy", str(cache_dir)], capture_output=True)
