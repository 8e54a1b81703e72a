"""Writing a report into a folder that an earlier octseg command wrote (a prediction or a run folder).

The report is octseg's file there, recorded like the folder's other files, so a later
``octseg predict --overwrite`` removes it with the rest and the folder never looks like a user's.
The claim takes the folder's lock (never while another octseg process writes it) and keeps the
earlier command's record (``run.json``) as it was: a report does not change what the folder is.
"""

from __future__ import annotations

from pathlib import Path

from octseg.errors import DataError
from octseg.io.outputs import OutputFolder


def claim_for_report(folder, command: str) -> OutputFolder:
    """The claim on ``folder`` (written by ``octseg COMMAND``) for writing its report.

    A prediction folder holding files octseg did not write is refused as any octseg output
    folder is; a run folder (``train``) belongs to its run as a whole."""
    folder = Path(folder)
    info = OutputFolder(folder, command)._run_info()
    if info is not None and info.get("command") not in (command, None):
        raise DataError(folder, f"holds the output of octseg {info.get('command')}, not of octseg {command}")
    return OutputFolder(folder, command, reuse=True, whole=command != "predict", keep_run_info=True)
