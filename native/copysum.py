"""Copy a file and checksum it in one pass (VM image propagation, later migration): BLAKE3
per 4 MiB chunk, combined into one "blake3-4m:<hex>" digest (defined precisely in
copysum_py's docstring); sparse files stay sparse; copy_file can verify an expected digest
before the copy appears at its destination; read_chunks hands each chunk with its digest to a
consumer in the same pass as the read (manager-to-manager transfer).

Uses the Cython extension `_copysum` (I/O loop without the GIL, hashing overlapped in a
second thread) when it is built and importable, else the pure-Python twin `copysum_py`
(same API, same results, slower). VWS_NO_EXTENSIONS=1 forces the twin. IMPLEMENTATION says
which one was chosen: "cython" or "python"."""
from __future__ import annotations

from ._choose import NO_EXTENSIONS, choose

IMPLEMENTATION, (copy_file, digest_file, read_chunks) = choose(
    "_copysum", "copysum_py", ("copy_file", "digest_file", "read_chunks"))

from .copysum_py import (
    CHUNK,
    PROGRESS_STEP,
    CopyResult,
    DigestMismatch,
    chunk_count,
    combine,
    parse_digest,
    zero_chunk_digest,
)

__all__ = ["CHUNK", "CopyResult", "DigestMismatch", "IMPLEMENTATION", "NO_EXTENSIONS", "PROGRESS_STEP",
           "chunk_count", "combine", "copy_file", "digest_file", "parse_digest", "read_chunks", "zero_chunk_digest"]
