"""What each image family needs from cloud-init before a DIRAC pilot can run on it.

``image_family`` of a machinetype (``config.models.ImageFamily``) names the image the cloud
boots; the templates add what that image lacks:

=========  ==============================  ======================  ============  ==========
family     image                           packages (cloud-init)   work area     containers
=========  ==============================  ======================  ============  ==========
el9        AlmaLinux/Rocky/RHEL 9 cloud    cvmfs, python3, tar     ephemeral     apptainer
           image (the default)             (CernVM repository,     disk if the   from CVMFS
                                           key CernVM-2048)        flavor has
                                                                   one
el8        the same, EL 8                  same (both CernVM keys) same          same
cernvm4    CernVM 4 (EL7, legacy: last     none: CVMFS is there    root disk     the image's
           release 4.5, 2021)
=========  ==============================  ======================  ============  ==========

Every family runs the same agent (python3, standard library) as root and the pilot as the
unprivileged ``PILOT_USER`` (``userdata.py``); apptainer from CVMFS
(``oasis.opensciencegrid.org``) needs unprivileged user namespaces, which the VM's preparation
enables.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudvac.config.models import ImageFamily

CERNVM_KEYS = "https://cvmrepo.s3.cern.ch/cvmrepo/yum/"
APPTAINER_REPOSITORY = "oasis.opensciencegrid.org"


@dataclass(frozen=True, slots=True)
class Family:
    """One image family as the templates use it (see the module's table)."""

    name: str
    packages: tuple[str, ...]  # empty: nothing installed, no package repository added
    gpgkeys: str  # yum's gpgkey: whitespace-separated URLs
    ephemeral_work: bool  # mount the flavor's ephemeral disk as the pilot's work area
    container_path: str  # appended to the pilot's PATH ('' for none)
    repositories: tuple[str, ...]  # CVMFS repositories every VO needs on this family


_EL = Family(
    "el9", ("cvmfs", "python3", "tar"), CERNVM_KEYS + "RPM-GPG-KEY-CernVM-2048", True,
    f"/cvmfs/{APPTAINER_REPOSITORY}/mis/apptainer/current/bin", (APPTAINER_REPOSITORY,))

FAMILIES: dict[str, Family] = {
    "el9": _EL,
    # EL 8 still accepts the original key, which older packages were signed with.
    "el8": Family("el8", _EL.packages,
                  f"{_EL.gpgkeys} {CERNVM_KEYS}RPM-GPG-KEY-CernVM", True,
                  _EL.container_path, _EL.repositories),
    "cernvm4": Family("cernvm4", (), "", False, "", ()),
}


def family(name: ImageFamily) -> Family:
    """The family named in a machinetype's ``image_family``."""
    return FAMILIES[name]
