"""A service ends with the process that launched it, so none is left orphaned."""

from __future__ import annotations

import ctypes
import os
import signal

# Set by the launcher (`paylayer dev`, the tests) in each child's environment; not a setting.
PARENT_PID_VARIABLE = "PAYLAYER_PARENT_PID"


def die_with_parent() -> None:
    """Called first thing by every service: end with the launcher, so none is orphaned.

    Done in the child rather than with Popen's preexec_fn, which may deadlock a child forked
    from a parent that runs gRPC threads (the tests do).
    """
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent:
        return
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the launcher's own stop is all there is
    if os.getppid() != int(parent):
        raise SystemExit("launcher gone before start")
