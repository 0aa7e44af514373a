"""Run a command the way systemd runs a hardened service, without systemd (no systemd runs
where the tests do).  Run as root with Debian's python3 (its ``seccomp`` module, Debian
package python3-seccomp) in a new mount namespace::

    unshare --mount --propagation private /usr/bin/python3 confine.py SPEC.json

SPEC (written by ``test_deploy.py`` from the installed unit) says: the image directory to
``chroot`` into; ``binds`` (host path, path in the image, writable?); ``tmpfs`` (path in
the image, mode); ``devices`` (a private ``/dev`` with these nodes only); ``read_only``
(the image itself read-only: ``ProtectSystem=strict``, only the binds marked writable stay
writable, as StateDirectory=/LogsDirectory= make them); the user, group, ``umask``,
environment and argv; ``nofile`` (the soft open-file limit systemd gives, 1024);
``no_new_privs``; ``no_capabilities`` (an empty bounding set);
``mdwe`` (``MemoryDenyWriteExecute=yes`` through the kernel's ``PR_SET_MDWE``, which
refuses the same writable-and-executable mappings systemd's seccomp filter does);
``syscalls``: the allow list systemd resolves from ``SystemCallFilter=``, anything else
failing with EPERM (``SystemCallErrorNumber=EPERM``), and ``families``
(``RestrictAddressFamilies=``: socket() of any other family fails, with EPERM where
systemd says EAFNOSUPPORT).

Not emulated: PrivateUsers=, ProtectProc=, ProtectKernel*=, ProtectClock=, RestrictNamespaces=
beyond what the syscall filter refuses.  The command replaces this process (same pid).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 24, 38, 65, 1
libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}, {value}): {os.strerror(code)}")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def build_root(spec: dict[str, Any]) -> str:
    """The image with its mounts, read-only where the spec says; returns its path."""
    image = spec["image"]
    mount("--make-rprivate", "/")
    mount("--bind", image, image)
    if spec["read_only"]:
        mount("-o", "remount,bind,ro", image)
    for source, target, writable in spec["binds"]:
        where = image + target
        mount("--rbind", source, where)  # a bind keeps its source's flags: set them
        mount("-o", f"remount,bind,{'rw' if writable else 'ro'}", where)
    for target, mode in spec["tmpfs"]:
        mount("-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev", "tmpfs", image + target)
    if spec["devices"] is not None:
        dev = image + "/dev"
        mount("-t", "tmpfs", "-o", "mode=0755,nosuid,noexec", "tmpfs", dev)
        for node in spec["devices"]:
            Path(dev, node).touch()
            mount("--bind", f"/dev/{node}", f"{dev}/{node}")
        os.mkdir(f"{dev}/shm", 0o1777)
        mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", f"{dev}/shm")
    return str(image)


def drop_privileges(spec: dict[str, Any]) -> None:
    """User and group, no capability left, NoNewPrivileges, UMask."""
    if spec["nofile"] is not None:  # systemd's default for services: LimitNOFILE=1024:524288
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(spec["nofile"], hard), hard))
    if spec["no_capabilities"]:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            prctl(PR_CAPBSET_DROP, cap)
    if spec["user"] is not None:
        user, uid, gid = spec["user"]
        os.initgroups(user, gid)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if spec["no_new_privs"]:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.umask(spec["umask"])


def load_filter(spec: dict[str, Any]) -> None:
    import seccomp  # type: ignore[import-not-found]  # Debian's python3-seccomp

    syscalls, families = spec["syscalls"], spec["families"]
    if syscalls is None:
        return
    rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in syscalls:
        if name == "socket" and families is not None:
            for family in families:
                rules.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
            continue
        # a name that is no system call of this architecture is skipped, as systemd does
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            rules.add_rule(seccomp.ALLOW, name)
    rules.load()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    root = build_root(spec)
    os.chroot(root)
    os.chdir("/")
    drop_privileges(spec)
    if spec["mdwe"]:
        prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
    load_filter(spec)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    main()
