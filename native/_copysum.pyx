# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython copy-and-checksum core: the same API and the same results as the pure-Python twin
`copysum_py` (whose docstring defines the digest and the sparse-file rules); the digest
format, CopyResult, DigestMismatch and the partial-file handling are reused from there.

One pass, two threads: the calling thread runs the I/O loop without the GIL (SEEK_DATA/
SEEK_HOLE, pread of the data ranges into a ring of NSLOTS aligned chunk buffers, zero test,
pwrite of the data ranges) while a helper thread hashes each filled buffer with BLAKE3 (the
blake3 package releases the GIL while it hashes), so copying and hashing overlap on two
cores. A buffer is refilled only once its chunk has been hashed (and, being on the same
thread, written); while waiting for one, the I/O loop hashes queued chunks itself. The GIL
is taken only every PROGRESS_STEP bytes (to check for signals and call progress) and to
hash in the I/O thread."""
import os
import threading

from blake3 import blake3

from cpython.buffer cimport PyBUF_READ
from cpython.exc cimport PyErr_CheckSignals
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.errno cimport EINTR, EINVAL, EIO, ENOMEM, ENXIO, errno
from libc.stdint cimport INT64_MAX, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memset
from posix.types cimport off_t

from . import copysum_py as _py
from .copysum_py import (CHUNK, PROGRESS_STEP, CopyResult, DigestMismatch, chunk_count, combine, parse_digest,
                         zero_chunk_digest)

__all__ = ["CHUNK", "CopyResult", "DigestMismatch", "NSLOTS", "PROGRESS_STEP", "chunk_count", "combine",
           "copy_file", "digest_file", "parse_digest", "read_chunks", "zero_chunk_digest"]

cdef extern from "<errno.h>":
    enum: EOPNOTSUPP

cdef extern from *:
    """
    #include <errno.h>
    static void vws_set_errno(int e) { errno = e; }
    """
    void set_errno "vws_set_errno"(int e) noexcept nogil

cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void* buf, size_t n, off_t offset)
    ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset)
    off_t lseek(int fd, off_t offset, int whence)
    enum: SEEK_DATA
    enum: SEEK_HOLE

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    enum: MADV_HUGEPAGE

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_cond_init(pthread_cond_t* c, const void* attr)
    int pthread_cond_destroy(pthread_cond_t* c)
    int pthread_cond_wait(pthread_cond_t* c, pthread_mutex_t* m)
    int pthread_cond_broadcast(pthread_cond_t* c)

# Chunk buffers in the ring. On 2 cores with 1 GiB in page cache, 2, 4 and 8 measured
# within noise of each other; 4 lets the I/O loop run a few chunks ahead of the hashing (or
# through holes past chunks still being hashed) and keeps the ring (16 MiB) within L3.
NSLOTS = 4
# The ring never takes more than this (unless two chunks need more).
cdef int64_t RING_BYTES = 64 << 20
cdef int64_t ALIGN = 4096
cdef size_t HUGE = 2 << 20
# One ring (the largest used so far, 16 MiB with the defaults) is kept for the next call: a
# fresh one would cost page faults every time. Taken and given back with the GIL held
# (__cinit__, __dealloc__), so calls in several threads at once simply allocate their own.
cdef char* _spare_ring = NULL
cdef int64_t _spare_bytes = 0
cdef int64_t NO_DATA = INT64_MAX

# Outcomes of the I/O loop.
cdef enum:
    DONE = 0
    ABORTED = 1   # hashing failed (in either thread); its exception is raised
    OS_ERROR = 2  # errno in err
    SHRANK = 3    # the source ended before its size


cdef inline int read_full(int fd, char* p, int64_t n, int64_t off) noexcept nogil:
    cdef ssize_t r
    while n > 0:
        r = pread(fd, p, <size_t>n, <off_t>off)
        if r < 0:
            if errno == EINTR:
                continue
            return OS_ERROR
        if r == 0:
            return SHRANK
        p += r
        n -= r
        off += r
    return DONE


cdef inline int write_full(int fd, const char* p, int64_t n, int64_t off) noexcept nogil:
    cdef ssize_t r
    while n > 0:
        r = pwrite(fd, p, <size_t>n, <off_t>off)
        if r < 0:
            if errno == EINTR:
                continue
            return OS_ERROR
        if r == 0:  # never for a regular file; do not spin
            set_errno(EIO)
            return OS_ERROR
        p += r
        n -= r
        off += r
    return DONE


cdef inline bint all_zero(const char* p, int64_t n) noexcept nogil:
    """True when the n bytes at p (8-byte aligned) are all zero; stops at the first 64-byte
    block holding a non-zero byte."""
    cdef const uint64_t* q = <const uint64_t*>p
    cdef int64_t words = n >> 3
    cdef int64_t i = 0
    cdef int64_t j
    if words > 0 and q[0] != 0:
        return False
    while i + 8 <= words:
        if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7]) != 0:
            return False
        i += 8
    while i < words:
        if q[i] != 0:
            return False
        i += 1
    for j in range(words << 3, n):
        if p[j] != 0:
            return False
    return True


cdef class _Pipeline:
    """One copy (dfd >= 0) or digest (dfd == -1) of size bytes from sfd; or, with consume, a
    read of the chunks at the given positions, each handed to consume in order (read_chunks).

    The I/O loop (the calling thread, without the GIL) reads each chunk that holds data into
    the next buffer of the ring, queues it for hashing unless it is all zeros, then writes
    it. Chunks in holes take no buffer, so the loop runs on through holes while earlier
    chunks are still being hashed. A buffer is refilled only when the chunk it held is done
    (hashed). The hashing thread takes queued chunks in order; when the I/O loop would have
    to wait for a buffer, or has read everything, it hashes queued chunks itself rather than
    sit idle, so a descheduled helper thread costs at most the overlap, never more."""
    cdef pthread_mutex_t mu
    cdef pthread_cond_t cv
    cdef bint sync_made
    cdef int sfd, dfd
    cdef int64_t size, cs, stride, nchunks, nslots
    # Guarded by mu: the hashing queue (chunk and buffer numbers, never more than nslots), its
    # head and tail counters, whether the I/O loop has queued its last chunk, abort, done.
    cdef int64_t* qchunk
    cdef int64_t* qslot
    cdef int64_t qhead, qtail
    cdef bint finished
    cdef bint aborted
    cdef uint8_t* done              # per chunk: hashed, or found to be all zeros
    cdef uint8_t* flags             # per chunk: 1 = its digest comes from hashing a buffer
    cdef int64_t* owner             # per buffer: the chunk it holds, or -1 (I/O loop only)
    cdef char* ring
    cdef int64_t ring_bytes
    cdef int64_t* segs              # [a, b) data ranges of the current chunk
    cdef int64_t segcap
    cdef int64_t ds, de             # cached data extent of the source
    cdef int64_t data_bytes, written
    cdef list digests
    cdef list views
    cdef object error
    # read_chunks only: the chunk at each position (NULL: position p is chunk p), the buffer
    # each position took (-1: none, a hole), the position each buffer holds, the next
    # position to hand to consume (I/O loop only).
    cdef int64_t* sel
    cdef int64_t nsel
    cdef int64_t* pslot
    cdef int64_t* opos
    cdef int64_t dpos
    cdef object consume

    def __cinit__(self, int sfd, int dfd, int64_t size, int64_t cs, int nslots, positions=None, consume=None):
        global _spare_ring, _spare_bytes
        cdef void* mem = NULL
        cdef Py_ssize_t i
        self.sfd, self.dfd, self.size, self.cs = sfd, dfd, size, cs
        self.stride = (cs + ALIGN - 1) // ALIGN * ALIGN
        self.nchunks = (size + cs - 1) // cs
        self.nsel = self.nchunks if positions is None else len(positions)
        self.consume = consume
        self.nslots = max(2, min(nslots, RING_BYTES // self.stride))
        self.nslots = max(1, min(self.nslots, self.nsel))
        self.ds = self.de = -1
        self.digests = [None] * self.nchunks
        if _spare_ring != NULL and _spare_bytes >= self.nslots * self.stride:
            self.ring, self.ring_bytes = _spare_ring, _spare_bytes
            _spare_ring, _spare_bytes = NULL, 0
        else:
            self.ring_bytes = self.nslots * self.stride
            if posix_memalign(&mem, HUGE, self.ring_bytes) != 0:
                raise MemoryError()
            madvise(mem, self.ring_bytes, MADV_HUGEPAGE)  # fewer page faults; advice only
            self.ring = <char*>mem
        self.flags = <uint8_t*>calloc(self.nchunks + 1, 1)
        self.done = <uint8_t*>calloc(self.nchunks + 1, 1)
        self.qchunk = <int64_t*>malloc(self.nslots * sizeof(int64_t))
        self.qslot = <int64_t*>malloc(self.nslots * sizeof(int64_t))
        self.owner = <int64_t*>malloc(self.nslots * sizeof(int64_t))
        self.segcap = 16
        self.segs = <int64_t*>malloc(self.segcap * 2 * sizeof(int64_t))
        self.opos = <int64_t*>malloc(self.nslots * sizeof(int64_t))
        self.pslot = <int64_t*>malloc((self.nsel + 1) * sizeof(int64_t))
        if positions is not None:
            self.sel = <int64_t*>malloc((self.nsel + 1) * sizeof(int64_t))
        if (self.flags == NULL or self.done == NULL or self.qchunk == NULL or self.qslot == NULL
                or self.owner == NULL or self.segs == NULL or self.opos == NULL or self.pslot == NULL
                or (positions is not None and self.sel == NULL)):
            raise MemoryError()
        for i in range(self.nslots):
            self.owner[i] = -1
        for i in range(self.nsel):
            self.pslot[i] = -1
            if positions is not None:
                self.sel[i] = positions[i]
        self.views = [PyMemoryView_FromMemory(self.ring + i * self.stride, self.cs, PyBUF_READ)
                      for i in range(self.nslots)]
        pthread_mutex_init(&self.mu, NULL)
        pthread_cond_init(&self.cv, NULL)
        self.sync_made = True

    def __dealloc__(self):
        global _spare_ring, _spare_bytes
        self.views = None
        if self.ring != NULL and self.ring_bytes <= RING_BYTES and self.ring_bytes > _spare_bytes:
            free(_spare_ring)  # keep the larger one
            _spare_ring, _spare_bytes = self.ring, self.ring_bytes
        else:
            free(self.ring)
        free(self.flags)
        free(self.done)
        free(self.qchunk)
        free(self.qslot)
        free(self.owner)
        free(self.segs)
        free(self.opos)
        free(self.pslot)
        free(self.sel)
        if self.sync_made:
            pthread_cond_destroy(&self.cv)
            pthread_mutex_destroy(&self.mu)

    cdef void abort(self) noexcept nogil:
        pthread_mutex_lock(&self.mu)
        self.aborted = True
        pthread_cond_broadcast(&self.cv)
        pthread_mutex_unlock(&self.mu)

    cdef int lookup(self, int64_t pos) noexcept nogil:
        """Sets [ds, de) to the source's first data extent at or after pos (the Extents class
        of the twin, step for step). 0, or -1 with errno."""
        cdef off_t r, h = 0
        r = lseek(self.sfd, <off_t>pos, SEEK_DATA)
        if r >= 0:
            h = lseek(self.sfd, r, SEEK_HOLE)
        if r < 0 or h < 0:
            if errno == ENXIO:  # only a hole after pos
                self.ds = self.de = NO_DATA
            elif errno == EINVAL or errno == EOPNOTSUPP:  # no hole support: all data
                self.ds, self.de = 0, NO_DATA
            else:
                return -1
        else:
            self.ds, self.de = r, h
        if self.de <= pos:  # the file changed under us: take the rest as data
            self.ds, self.de = pos, NO_DATA
        return 0

    cdef int64_t segments(self, int64_t off, int64_t end) noexcept nogil:
        """Fills segs with the data ranges within [off, end); their count, or -1 with errno."""
        cdef int64_t n = 0, pos = off, a, b
        cdef int64_t* grown
        while pos < end:
            if pos >= self.de and self.lookup(pos) < 0:
                return -1
            if self.ds >= end:
                break
            a = pos if pos > self.ds else self.ds
            b = end if end < self.de else self.de
            if n == self.segcap:
                grown = <int64_t*>realloc(self.segs, self.segcap * 4 * sizeof(int64_t))
                if grown == NULL:
                    set_errno(ENOMEM)
                    return -1
                self.segs, self.segcap = grown, self.segcap * 2
            self.segs[2 * n] = a
            self.segs[2 * n + 1] = b
            n += 1
            pos = b
        return n

    cdef int hash_chunk(self, int64_t k, int64_t slot) except -1:
        """Hashes chunk k from buffer slot (the blake3 package releases the GIL meanwhile)
        and marks it done. Called with the GIL, from either thread."""
        cdef int64_t n = min(self.cs, self.size - k * self.cs)
        v = self.views[slot]
        self.digests[k] = blake3(v if n == self.cs else v[:n]).digest()
        with nogil:
            pthread_mutex_lock(&self.mu)
            self.done[k] = 1
            pthread_cond_broadcast(&self.cv)
            pthread_mutex_unlock(&self.mu)
        return 0

    cdef int64_t claim(self, bint wait, int64_t* slot) noexcept nogil:
        """The next queued chunk (its buffer in *slot), removed from the queue; -1 when there
        is none (wait=False), or, with wait=True, once the I/O loop has finished or aborted
        and none is left."""
        cdef int64_t k = -1
        pthread_mutex_lock(&self.mu)
        while wait and self.qhead == self.qtail and not self.finished and not self.aborted:
            pthread_cond_wait(&self.cv, &self.mu)
        if self.qhead != self.qtail and not self.aborted:
            k = self.qchunk[self.qhead % self.nslots]
            slot[0] = self.qslot[self.qhead % self.nslots]
            self.qhead += 1
        pthread_mutex_unlock(&self.mu)
        return k

    def hash_loop(self):
        """The hashing thread: queued chunks, in order, until the I/O loop has finished."""
        cdef int64_t k, slot = 0
        try:
            while True:
                with nogil:
                    k = self.claim(True, &slot)
                if k < 0:
                    return
                self.hash_chunk(k, slot)
        except BaseException as e:
            self.error = e
            self.abort()

    cdef int wait_done(self, int64_t k) noexcept nogil:
        """Until chunk k is done, hashing queued chunks meanwhile. DONE or ABORTED; a
        hashing error (in this thread) is kept in self.error and aborts."""
        cdef int64_t c, slot = 0
        cdef bint ready
        while True:
            pthread_mutex_lock(&self.mu)
            ready = self.done[k] != 0 or self.aborted
            pthread_mutex_unlock(&self.mu)
            if ready:
                break
            c = self.claim(False, &slot)
            if c >= 0:
                with gil:
                    try:
                        self.hash_chunk(c, slot)
                    except BaseException as e:
                        self.error = e
                        self.abort()
                continue
            pthread_mutex_lock(&self.mu)
            while not self.done[k] and not self.aborted:
                pthread_cond_wait(&self.cv, &self.mu)
            pthread_mutex_unlock(&self.mu)
        return ABORTED if self.aborted else DONE

    cdef inline int64_t chunk_at(self, int64_t p) noexcept nogil:
        return self.sel[p] if self.sel != NULL else p

    cdef int hand_over(self, int64_t k, int64_t slot) except -1:
        """consume(k, digest, its bytes or None), with the GIL."""
        cdef int64_t n = min(self.cs, self.size - k * self.cs)
        PyErr_CheckSignals()
        if slot < 0 or not self.flags[k]:
            self.consume(k, zero_chunk_digest(n), None)
        else:
            v = self.views[slot]
            self.consume(k, self.digests[k], v if n == self.cs else v[:n])
        return 0

    cdef int deliver(self, int64_t upto) noexcept nogil:
        """Hands positions [dpos, upto) to consume, in order, each once it is hashed (hashing
        queued chunks meanwhile). DONE or ABORTED (an exception from consume is kept)."""
        cdef int64_t k, slot
        cdef int rc
        while self.dpos < upto:
            k = self.chunk_at(self.dpos)
            slot = self.pslot[self.dpos]
            if slot >= 0:
                rc = self.wait_done(k)
                if rc != DONE:
                    return rc
            with gil:
                try:
                    self.hand_over(k, slot)
                except BaseException as e:
                    self.error = e
                    self.abort()
                    return ABORTED
            self.dpos += 1
        return DONE

    def run(self, progress):
        cdef int64_t p, k, off, n, end, i, nseg, a, b, prev, slot
        cdef int64_t used = 0           # chunks that took a buffer so far
        cdef bint handing = self.consume is not None
        cdef int64_t step = PROGRESS_STEP
        cdef int64_t size = self.size, cs = self.cs, nslots = self.nslots
        cdef char* buf
        cdef int rc = DONE, err = 0
        cdef uint8_t flag
        thread = threading.Thread(target=self.hash_loop, name="vws-copysum-hash", daemon=True)
        thread.start()
        try:
            with nogil:
                for p in range(self.nsel):
                    k = self.chunk_at(p)
                    off = k * cs
                    n = min(cs, size - off)
                    end = off + n
                    nseg = self.segments(off, end)
                    if nseg < 0:
                        rc, err = OS_ERROR, errno
                        break
                    if nseg > 0:
                        slot = used % nslots
                        used += 1
                        if self.owner[slot] >= 0:  # the chunk it held must be done (and handed over)
                            if handing:
                                rc = self.deliver(self.opos[slot] + 1)
                            else:
                                rc = self.wait_done(self.owner[slot])
                            if rc != DONE:
                                break
                        self.owner[slot] = k
                        self.opos[slot] = p
                        self.pslot[p] = slot
                        buf = self.ring + slot * self.stride
                        prev = off
                        for i in range(nseg):
                            a, b = self.segs[2 * i], self.segs[2 * i + 1]
                            memset(buf + (prev - off), 0, a - prev)
                            rc = read_full(self.sfd, buf + (a - off), b - a, a)
                            if rc != DONE:
                                err = errno
                                break
                            self.data_bytes += b - a
                            prev = b
                        if rc != DONE:
                            break
                        memset(buf + (prev - off), 0, end - prev)
                        flag = not all_zero(buf, n)
                        self.flags[k] = flag
                        pthread_mutex_lock(&self.mu)
                        if flag:
                            self.qchunk[self.qtail % nslots] = k
                            self.qslot[self.qtail % nslots] = slot
                            self.qtail += 1
                            pthread_cond_broadcast(&self.cv)
                        else:
                            self.done[k] = 1
                        pthread_mutex_unlock(&self.mu)
                        if flag and self.dfd >= 0:
                            for i in range(nseg):
                                a, b = self.segs[2 * i], self.segs[2 * i + 1]
                                rc = write_full(self.dfd, buf + (a - off), b - a, a)
                                if rc != DONE:
                                    err = errno
                                    break
                                self.written += b - a
                            if rc != DONE:
                                break
                    if end < size and end // step > off // step:
                        with gil:
                            PyErr_CheckSignals()
                            if progress is not None:
                                progress(end, size)
                if rc == DONE:
                    pthread_mutex_lock(&self.mu)
                    self.finished = True
                    pthread_cond_broadcast(&self.cv)
                    pthread_mutex_unlock(&self.mu)
                    # Help with what is still queued, then wait for the rest (and hand it over).
                    if handing:
                        rc = self.deliver(self.nsel)
                    else:
                        for slot in range(nslots):
                            if self.owner[slot] >= 0:
                                rc = self.wait_done(self.owner[slot])
                                if rc != DONE:
                                    break
        except BaseException:
            self.abort()
            thread.join()
            raise
        if rc != DONE:
            self.abort()
        thread.join()
        if self.error is not None:
            raise self.error
        if rc == OS_ERROR:
            raise OSError(err, os.strerror(err))
        if rc == SHRANK:
            raise _py.shrank()
        for k in range(0 if handing else self.nchunks):
            if not self.flags[k]:
                self.digests[k] = zero_chunk_digest(min(cs, size - k * cs))
        if progress is not None:
            progress(size, size)
        return self.digests, self.data_bytes, self.written


def _core(int sfd, int dfd, int64_t size, int64_t chunk_size, progress, int nslots=NSLOTS):
    return _Pipeline(sfd, dfd, size, chunk_size, nslots).run(progress)


def copy_file(src, dst, *, expected=None, progress=None, fsync=False, chunk_size=CHUNK):
    """Copies src to dst and returns its digest; see copysum_py.copy_file."""
    return _py.run_copy(_core, src, dst, expected=expected, progress=progress, fsync=fsync,
                        chunk_size=chunk_size)


def digest_file(path, *, progress=None, chunk_size=CHUNK):
    """The digest of a file, as copy_file would compute it, writing nothing."""
    return _py.run_digest(_core, path, progress=progress, chunk_size=chunk_size)


def _scan(int sfd, int64_t size, int64_t chunk_size, list positions, consume, int nslots=NSLOTS):
    return _Pipeline(sfd, -1, size, chunk_size, nslots, positions, consume).run(None)[1]


def read_chunks(path, consume, *, indices=None, chunk_size=CHUNK):
    """Reads chunks of a file in one pass, each hashed as it is read; see copysum_py.read_chunks.
    Here the read runs without the GIL and the hashing on a second thread, as for copy_file."""
    return _py.run_read(_scan, path, consume, indices=indices, chunk_size=chunk_size)
