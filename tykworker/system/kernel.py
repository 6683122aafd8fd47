"""Process credentials and Linux ``prctl``: parent-death signal, subreaper, privilege drop;
descriptors a forked child must not keep; the descriptor limit.

``drop_privileges`` does setgroups, setgid, setuid, in that order, then re-arms the
parent-death signal the kernel clears on a credential change.
"""

from __future__ import annotations

import ctypes
import os
import resource

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> bool:
    """Linux ``prctl(option, value)``; False where unavailable."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return False


def drop_privileges(uid: int, gid: int, groups: tuple[int, ...], death_signal: int) -> None:
    """Become ``uid``/``gid`` with exactly ``groups`` as supplementary groups, for good
    (real, effective and saved ids). Raises PermissionError unless running as root (or
    already those ids)."""
    if (os.getuid(), os.getgid()) == (uid, gid) and set(os.getgroups()) == set(groups):
        return
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # The kernel clears PR_SET_PDEATHSIG when credentials change: arm it again.
    prctl(PR_SET_PDEATHSIG, death_signal)


def close_fds_except(keep: set[int]) -> None:
    """Close every descriptor of this process but those in ``keep`` (a forked child
    sheds what it inherited). Python objects still wrapping a closed descriptor must not
    be used or finalized afterwards: the caller leaves them alive until ``os._exit``."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (no privilege needed;
    an unlimited hard limit counts as 2**20); returns the soft limit in effect afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return target if soft == resource.RLIM_INFINITY else soft
