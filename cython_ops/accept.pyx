# cython: language_level=3
"""The HTTP door's accept step without the GIL: accept what the listen queue holds, answer the
connections past the cap (or during the drain) with a prepared 503 on the spot, count the open
ones.

Why compiled: the door accepts in a thread of its own so that a refusal need not wait for the busy
event loop. Written in Python, that thread gave the GIL up at every accept, send and shutdown and
then waited to get it back, up to `sys.getswitchinterval()` (5 ms) each time the event loop or an
engine thread was running Python: in a 2,000-connection chat burst its 1,488 refusals came at p50
0.64 s, p99 over 1 s (the same run with a 0.5 ms switch interval: p50 0.17 s). Here a whole batch
is accepted and refused with the GIL released; it is taken once per batch, after the refused
clients have their answer, to hand the sockets over.

The open count is shared between the accept thread (counts up, here) and the event loop (counts
down as connections end, `connection_closed`): a C long under atomic operations.
"""

from libc.errno cimport EAGAIN, EINTR, errno  # EWOULDBLOCK is EAGAIN on Linux

cdef extern from *:
    """
    static long sage_gate_load(long *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static long sage_gate_add(long *p, long v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
    static void sage_gate_store(long *p, long v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    """
    long sage_gate_load(long *p) noexcept nogil
    long sage_gate_add(long *p, long v) noexcept nogil
    void sage_gate_store(long *p, long v) noexcept nogil

cdef extern from "<sys/socket.h>" nogil:
    int accept4(int sockfd, void *addr, void *addrlen, int flags)
    ssize_t send(int sockfd, const void *buf, size_t length, int flags)
    int shutdown(int sockfd, int how)
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int MSG_NOSIGNAL
    int SHUT_WR

cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int F_GETFL
    int O_NONBLOCK

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN

cdef enum:
    MAX_BATCH = 256  # connections accepted per GIL-free round (the listen queue may hold thousands)

cpdef enum Outcome:
    ADMITTED = 0
    REFUSED_FULL = 1  # past the cap: the `too_many` answer
    REFUSED_DRAINING = 2  # during the drain: the `shutting_down` answer


cdef class AcceptGate:
    """Counts open connections against a cap; `accept_batch` admits or refuses new ones.

    Thread-safe as used: one or more accept threads call `accept_batch`, any thread calls
    `connection_closed` and `set_draining`."""

    cdef long _open
    cdef long _draining
    cdef readonly long cap
    cdef readonly bytes too_many
    cdef readonly bytes shutting_down

    def __init__(self, long cap, bytes too_many, bytes shutting_down):
        if cap < 1:
            raise ValueError(f"cap must be at least 1, not {cap}")
        self.cap = cap
        self.too_many = too_many
        self.shutting_down = shutting_down
        self._open = 0
        self._draining = 0

    @property
    def open(self) -> int:
        """Connections admitted and not yet closed."""
        return sage_gate_load(&self._open)

    @property
    def draining(self) -> bool:
        return sage_gate_load(&self._draining) != 0

    def set_draining(self) -> None:
        """From now on every new connection gets the `shutting_down` answer."""
        sage_gate_store(&self._draining, 1)

    def connection_closed(self) -> None:
        """An admitted connection ended (or was never served): its place is free."""
        sage_gate_add(&self._open, -1)

    def accept_batch(self, int listen_fd, int timeout_ms):
        """Wait up to `timeout_ms` for the listener (non-blocking) to be readable, then accept up to MAX_BATCH
        connections (non-blocking, close-on-exec). Returns `(connections, error)`:
        `connections` a list of `(fd, outcome, sent)`; `outcome` ADMITTED (counted open), or
        REFUSED_FULL / REFUSED_DRAINING: its answer was sent (`sent` bytes of it; the write side
        is shut down when all went; -1: the client was gone, only close it). `error` is the errno
        that ended the batch other than EAGAIN/EINTR (0 if none): the caller decides what it
        means (a vanished connection, out of descriptors)."""
        cdef int fds[MAX_BATCH]
        cdef int outcomes[MAX_BATCH]
        cdef ssize_t sent[MAX_BATCH]
        cdef int n = 0
        cdef int fd
        cdef int error = 0
        cdef int ready
        cdef pollfd waiting
        cdef const char *too_many = self.too_many
        cdef size_t too_many_len = len(self.too_many)
        cdef const char *shutting_down = self.shutting_down
        cdef size_t shutting_down_len = len(self.shutting_down)
        cdef const char *answer
        cdef size_t answer_len
        cdef ssize_t wrote
        cdef int flags = fcntl(listen_fd, F_GETFL)
        if flags < 0 or not (flags & O_NONBLOCK):
            raise ValueError("accept_batch needs a listening socket in non-blocking mode (socket.setblocking(False))")
        with nogil:
            waiting.fd = listen_fd
            waiting.events = POLLIN
            waiting.revents = 0
            ready = poll(&waiting, 1, timeout_ms)
            if ready < 0 and errno != EINTR:
                error = errno
            while ready > 0 and n < MAX_BATCH:
                fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                if fd < 0:
                    if errno == EINTR:
                        continue
                    if errno != EAGAIN:
                        error = errno
                    break
                fds[n] = fd
                sent[n] = 0
                if sage_gate_load(&self._draining):
                    outcomes[n] = REFUSED_DRAINING
                elif sage_gate_add(&self._open, 1) > self.cap:
                    sage_gate_add(&self._open, -1)
                    outcomes[n] = REFUSED_FULL
                else:
                    outcomes[n] = ADMITTED
                if outcomes[n] != ADMITTED:
                    if outcomes[n] == REFUSED_DRAINING:
                        answer, answer_len = shutting_down, shutting_down_len
                    else:
                        answer, answer_len = too_many, too_many_len
                    # A fresh socket's send buffer takes the answer whole, as a rule; it goes out
                    # before the request is read (HTTP lets a server answer early).
                    wrote = send(fd, answer, answer_len, MSG_NOSIGNAL)
                    if wrote < 0:
                        wrote = 0 if errno == EAGAIN else -1
                    elif <size_t>wrote == answer_len:
                        shutdown(fd, SHUT_WR)
                    sent[n] = wrote
                n += 1
        return [(fds[i], outcomes[i], sent[i]) for i in range(n)], error
