"""``sendmmsg(2)`` for the relay benchmark's load side, through cffi's ABI mode (nothing compiled).

The load worker's shared socket (scripts/bench/load.py ``SharedLoad``) and the echo inference
(scripts/bench/servers.py ``BatchEcho``) send many datagrams per system call from buffers they already
hold, with message vectors they build once; relay/inference/udp_batch.py's ``SendBatch`` takes a list of
bytes per call instead, which is what these avoid.
"""

from __future__ import annotations

import sys
from typing import Any

SENDMMSG_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""


def load_sendmmsg() -> tuple[Any, Any]:
    """cffi's FFI (with ``struct mmsghdr`` and ``struct iovec``) and libc; RuntimeError off Linux."""
    import cffi

    if not sys.platform.startswith("linux"):  # the struct layouts above are Linux's
        raise RuntimeError("sendmmsg: Linux only")
    ffi = cffi.FFI()
    ffi.cdef(SENDMMSG_CDEF)
    libc = ffi.dlopen(None)
    getattr(libc, "sendmmsg")  # noqa: B009 (resolves the symbol now, not on the first send)
    if ffi.sizeof("struct iovec") != 16:
        raise RuntimeError("sendmmsg: unexpected struct iovec layout")
    return ffi, libc
