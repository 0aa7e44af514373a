"""The URL and file layout VMs, the web service and the simulator share.

The web service's routes are these templates; the user_data renderer and the simulated
pilots build URLs from the same templates, so the three cannot disagree.
"""

from __future__ import annotations

import re

#: A file name a VM may upload (and a machinetype's ``heartbeat_file``): ASCII only, no
#: leading dot (temporary files are dot files), at most 64 characters.  Use ``fullmatch``.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", re.ASCII)
#: The file a VM uploads to say it is alive, unless its machinetype names another.
HEARTBEAT_FILE = "heartbeat"
#: The file a VM uploads to say how it ended (``NNN text``, HSF-TN-2016-04).
SHUTDOWN_FILE = "shutdown_message"
#: The in-VM agent's CPU totals at its end: ``<user s> <system s> <idle s>`` (accounting).
CPU_TOTALS_FILE = "cpu_totals"
#: The pilot's log, as the VM uploads it (accounting reads the JobAgent's jobs from it).
PILOT_LOG_FILE = "pilot.log"

MACHINE = "/machines/{space}/{name}"
JOBOUTPUTS = MACHINE + "/joboutputs"
JOBOUTPUT = JOBOUTPUTS + "/{file}"
MACHINEFEATURES = MACHINE + "/machinefeatures"
MACHINEFEATURE = MACHINEFEATURES + "/{key}"
JOBFEATURES = MACHINE + "/jobfeatures"
JOBFEATURE = JOBFEATURES + "/{key}"
USER_DATA = MACHINE + "/user_data"
HEARTBEATLIST = "/heartbeatlists/{space}/{machinetype}"


def machine_urls(base: str, space: str, machinetype: str, name: str) -> dict[str, str]:
    """The URLs one machine is told about, by their VCycle/MJF names."""
    values = {"space": space, "name": name, "machinetype": machinetype}
    return {
        "machinefeatures_url": base + MACHINEFEATURES.format(**values),
        "jobfeatures_url": base + JOBFEATURES.format(**values),
        "joboutputs_url": base + JOBOUTPUTS.format(**values),
        "heartbeat_machines_url": base + HEARTBEATLIST.format(**values),
    }


def joboutput_url(base: str, space: str, name: str, file: str) -> str:
    """Where machine ``name`` uploads ``file``."""
    return base + JOBOUTPUT.format(space=space, name=name, file=file)
