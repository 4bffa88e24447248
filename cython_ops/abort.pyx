# cython: language_level=3
"""A C callback that reads a flag: llama.cpp's abort callback, cheap enough for every graph node.

llama.cpp calls `bool abort_callback(void *data)` between every two nodes of a graph (hundreds
per decode step) on its compute thread. A Python (ctypes) callback there would take the GIL
hundreds of times a step; this one is a relaxed atomic load of the int at `data`. The caller owns
the flag's memory (a numpy int32 array) and sets it from any thread to cut the running step short.
"""

from libc.stdint cimport uintptr_t

cdef extern from *:
    """
    #include <stdbool.h>
    static bool sage_flag_is_set(void *data) {
        return data != 0 && __atomic_load_n((const int *) data, __ATOMIC_RELAXED) != 0;
    }
    """
    bint sage_flag_is_set(void *data) noexcept nogil


def flag_callback_address() -> int:
    """The address of `bool f(void *data)`: true when the int32 at `data` is non-zero."""
    return <uintptr_t>&sage_flag_is_set


def flag_is_set(uintptr_t data) -> bool:
    """The callback itself, callable from Python (for tests)."""
    return sage_flag_is_set(<void *>data)
