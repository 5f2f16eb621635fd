"""One command in a fresh process, measured: wall seconds and its own peak RSS.

The peak comes from a tiny launcher process (a bare interpreter) that forks and execs the
command and reads ``wait4``'s resource usage. Linux carries the pre-``exec`` memory's high-water
mark into the child's ``ru_maxrss``, so measuring a child forked straight from a benchmark that
holds a large corpus would report the benchmark's own memory (that is how the n-gram's
end-to-end peak once read 3.2 GB for every step); the launcher holds a few MB.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(command: list[str], cwd: Path, env: dict, stdin=None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of ``command``; raises with its stderr's tail if it fails."""
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "err", "w+b") as err:
        peak = Path(tmp) / "peak"
        started = time.perf_counter()
        done = subprocess.run(  # output to files: a full pipe would block the child
            [sys.executable, "-S", "-c", _LAUNCHER, str(peak), *command],
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0 or not peak.exists():
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read().decode()[-3000:]}")
        return seconds, int(peak.read_text()) / 2**20  # KiB -> GB
