"""What test_deploy.py runs its checks with: the tools (Debian packages, named when
missing), the installed units read as systemd reads their settings, and an *image*: the
staged root made a host, in which ``confine.py`` runs a command under a unit's confinement
(the unit's settings turned into a confine.py spec) or as root."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
UNIT_DIR = "/usr/local/lib/systemd/system"
UNITS = ("cloudvac.service", "cloudvac-web.service")
PACKAGES = {"systemd-analyze": "systemd", "systemd-sysusers": "systemd",
            "systemd-tmpfiles": "systemd", "logrotate": "logrotate", "unshare": "util-linux",
            "python3-seccomp": "python3-seccomp"}


def tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert path, f"{name} is not installed: Debian package {PACKAGES[name]} (make system-deps)"
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_NO_CACHE_DIR": "1", **(env or {})})


def unit(root: Path, name: str) -> dict[str, list[str]]:
    """The [Service] and [Unit] settings of an installed unit, by key."""
    settings: dict[str, list[str]] = {}
    for line in (root / UNIT_DIR.lstrip("/") / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


CONFINE = Path(__file__).with_name("confine.py")


def syscall_groups() -> dict[str, list[str]]:
    """systemd's system call groups (``systemd-analyze syscall-filter``), by name."""
    groups: dict[str, list[str]] = {}
    listing = run(tool("systemd-analyze"), "syscall-filter").stdout
    for line in listing.splitlines():
        if line.startswith("@"):
            members = groups[line.strip()] = []
        elif line.startswith("    ") and not line.strip().startswith("#"):
            members.append(line.strip())
    return groups


def resolve(filters: list[str]) -> list[str]:
    """The allow list systemd makes of a unit's SystemCallFilter= lines."""
    groups = syscall_groups()

    def expand(names: list[str]) -> set[str]:
        return set().union(*({n} if not n.startswith("@") else expand(groups[n])
                             for n in names))
    assert not filters[0].startswith("~"), "the harness knows allow lists only"
    allowed: set[str] = set()
    for line in filters:
        names = line.removeprefix("~").split()
        allowed = allowed - expand(names) if line.startswith("~") else allowed | expand(names)
    return sorted(allowed)


@dataclass(frozen=True)
class Image:
    """The installed root made a host: the host's /usr and /etc (with the cloudvac user
    sysusers adds), the root's /opt/cloudvac, /etc and /var (tmpfiles' directories)."""

    path: Path
    opt: Path
    user: tuple[str, int, int]

    def spec(self, argv: list[str], settings: dict[str, list[str]] | None = None) -> Path:
        """A confine.py spec: ``argv`` (empty: the unit's ExecStart=) under the unit's
        confinement, or (no ``settings``) as root in the image."""
        binds = [["/usr", "/usr", False], [str(self.opt), "/opt/cloudvac", False],
                 ["/proc", "/proc", False], ["/sys", "/sys", False]]
        spec: dict[str, object] = {
            "image": str(self.path), "binds": binds, "tmpfs": [["/run", "0755"]],
            "devices": None, "read_only": False, "user": None, "umask": 0o022,
            "nofile": None, "no_new_privs": False, "no_capabilities": False, "mdwe": False,
            "syscalls": None, "families": None, "argv": argv,
            "env": {"PATH": "/usr/sbin:/usr/bin"}}
        if settings is not None:
            spec.update(self._confinement(settings))
            spec["argv"] = argv or spec["argv"]
            binds += [[str(self.path / p[1:]), p, True] for p in self._writable(settings)]
        path = self.path.parent / f"spec-{len(list(self.path.parent.glob('spec-*')))}.json"
        path.write_text(json.dumps(spec))
        return path

    def _writable(self, settings: dict[str, list[str]]) -> list[str]:
        return [f"/var/lib/{settings['StateDirectory'][0]}",
                f"/var/log/{settings['LogsDirectory'][0]}"]

    def _confinement(self, settings: dict[str, list[str]]) -> dict[str, object]:
        def yes(key: str) -> bool:
            return settings.get(key) == ["yes"]
        assert settings["User"] == [self.user[0]] == settings["Group"]
        assert settings["CapabilityBoundingSet"] == [""]  # confine.py drops every one
        assert settings["ProtectSystem"] == ["strict"] and yes("ProtectHome")
        assert yes("PrivateTmp") and yes("PrivateDevices")
        assert settings["SystemCallErrorNumber"] == ["EPERM"]
        environment = dict(line.split("=", 1) for line in
                           (self.path / "etc/default/cloudvac").read_text().splitlines()
                           if "=" in line and not line.startswith("#"))
        argv = [word for part in shlex.split(settings["ExecStart"][0])
                for word in (environment.get(part[1:], "").split() if part.startswith("$")
                             else [part])]
        return {"tmpfs": [["/run", "0755"], ["/tmp", "1777"], ["/var/tmp", "1777"],
                          ["/home", "0000"], ["/root", "0000"]],
                "devices": ["null", "zero", "full", "random", "urandom", "tty"],
                "read_only": True, "user": list(self.user),
                "umask": int(settings["UMask"][0], 8), "no_new_privs": yes("NoNewPrivileges"),
                "no_capabilities": True, "nofile": 1024,
                "mdwe": yes("MemoryDenyWriteExecute"),
                "syscalls": resolve(settings["SystemCallFilter"]),
                "families": [getattr(socket, f) for f in
                             settings["RestrictAddressFamilies"][0].split()],
                "argv": argv, "env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                      "/usr/bin", "HOME": "/var/lib/cloudvac",
                                      "USER": self.user[0], "LOGNAME": self.user[0],
                                      "LANG": "C.UTF-8", **environment}}

    def start(self, spec: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([tool("unshare"), "--mount", "--propagation", "private",
                                 SYSTEM_PYTHON, str(CONFINE), str(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def build_image(root: Path, path: Path) -> Image:
    """The root install.sh staged, made a host at ``path``: the host's /usr, a copy of its
    /etc with the root's files, the cloudvac user (systemd-sysusers) and directories
    (systemd-tmpfiles) added; /opt/cloudvac stays where install.sh put it (a bind)."""
    done = run(SYSTEM_PYTHON, "-c", "import seccomp")
    assert done.returncode == 0, "Debian package python3-seccomp is missing (make system-deps)"
    for where in ("usr", "opt/cloudvac", "var/lib", "var/log", "var/tmp", "tmp", "home",
                  "root", "dev", "proc", "sys", "run"):
        (path / where).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (path / link).symlink_to(f"usr/{link}")
    assert run("cp", "-a", "/etc", str(path)).returncode == 0
    shutil.copytree(root / "etc", path / "etc", symlinks=True, dirs_exist_ok=True)
    lib = root / "usr/local/lib"
    for command in ((tool("systemd-sysusers"), f"--root={path}",
                     str(lib / "sysusers.d/cloudvac.conf")),
                    (tool("systemd-tmpfiles"), f"--root={path}", "--create",
                     str(lib / "tmpfiles.d/cloudvac.conf"))):
        assert run(*command).returncode == 0, command
    entry = next(line.split(":") for line in (path / "etc/passwd").read_text().splitlines()
                 if line.startswith("cloudvac:"))
    return Image(path, root / "opt/cloudvac", ("cloudvac", int(entry[2]), int(entry[3])))
