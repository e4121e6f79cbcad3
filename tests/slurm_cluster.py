"""A throw-away one-node SLURM cluster on localhost, for testing the submitit launcher for real.

Needs Debian's ``slurmctld slurmd slurm-client munge`` and root (slurmd starts jobs as the
submitting user). Everything the daemons write (munge key and socket, state, spool, logs, pid
files) lives under one directory; ports are picked free at start, so a cluster here does not
clash with another one on the machine. Clients find the cluster through ``SLURM_CONF``
(`LocalSlurmCluster.env`).

There is no accounting daemon, and without one ``sacct`` fails and submitit cannot tell a job
that died from one still running. A small ``sacct`` stand-in on ``PATH`` answers submitit's
query (``JobID,State,NodeList``) from ``scontrol show job``.

By hand:  ``python tests/slurm_cluster.py start /tmp/slurm``  (prints the environment to export)
          ``python tests/slurm_cluster.py stop /tmp/slurm``
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
BINARIES = (*DAEMONS, "mungekey", "sbatch", "sinfo", "squeue", "scontrol", "scancel")

# Answers submitit's ``sacct -o JobID,State,NodeList --parsable2 -j ID ...`` from scontrol,
# which knows every job for MinJobAge (300 s) after it ends: long enough for a test.
SACCT_STAND_IN = '''\
#!{python}
"""sacct stand-in for a cluster without accounting: the fields submitit asks for, from scontrol."""
import subprocess, sys

args = sys.argv[1:]
fields = args[args.index("-o") + 1].split(",") if "-o" in args else ["JobID", "State"]
ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
print("|".join(fields))
for job_id in ids:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        info = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        array_task = info.get("ArrayTaskId", "N/A")
        if array_task != "N/A":
            info["JobID"] = info["ArrayJobId"] + "_" + array_task
        else:
            info["JobID"] = info.get("JobId", "")
        info["State"] = info.get("JobState", "UNKNOWN")
        print("|".join(info.get(f, "") for f in fields))
'''


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurmCluster:
    """Start with `start`, stop with `stop` (or use as a context manager)."""

    def __init__(self, root: str | os.PathLike, cpus: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"

    # --- environment for clients ----------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """This process's environment plus what a SLURM client needs to reach the cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    # --- start / stop ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LocalSlurmCluster:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(
                "SLURM/munge not installed (missing: " + ", ".join(missing) + "); "
                "apt-get install -y slurmctld slurmd slurm-client munge"
            )
        for d in ("munge", "state", "spool", "log", "run", "bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # munged checks that its socket's directory is not writable by others.
        os.chmod(self.root / "munge", 0o755)
        self._start_munge()
        self._write_sacct_stand_in()
        self._write_conf()
        self._run([_binary("slurmctld"), "-c", "-f", str(self.conf)])
        self._run([_binary("slurmd"), "-f", str(self.conf)])
        self._wait_until_idle(timeout)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel this cluster's jobs, then stop the daemons by the PIDs in their pid files
        (never by name: other clusters may run on this machine)."""
        self._cancel_jobs(timeout)
        for name in reversed(DAEMONS):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def _cancel_jobs(self, timeout: float) -> None:
        """A job's processes belong to slurmstepd, which outlives slurmd: cancel jobs first."""
        if self._pid("slurmctld") is None:
            return
        user = str(os.getuid())
        subprocess.run(["scancel", "-u", user], env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True
            )
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- pieces ---------------------------------------------------------------------------
    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            self._run([_binary("mungekey"), "-c", "-k", str(key)])
        self._run(
            [
                _binary("munged"),
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.root / 'run' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                "--force",  # runs as root; also takes over a stale socket from a killed run
            ]
        )

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def _write_sacct_stand_in(self) -> None:
        sacct = self.bin / "sacct"
        sacct.write_text(SACCT_STAND_IN.format(python=sys.executable))
        sacct.chmod(0o755)

    def _write_conf(self) -> None:
        r = self.root
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        node_memory = f"RealMemory={memory_mb} State=UNKNOWN"
        # No cgroups, accounting or systemd here: track processes by /proc, bind nothing.
        self.conf.write_text(
            textwrap.dedent(
                f"""\
                ClusterName=iwaetest
                SlurmctldHost={self.host}(127.0.0.1)
                SlurmctldPort={_free_port()}
                SlurmdPort={_free_port()}
                SlurmUser=root
                AuthType=auth/munge
                AuthInfo=socket={self.munge_socket}
                CredType=cred/munge
                MpiDefault=none
                ProctrackType=proctrack/linuxproc
                TaskPlugin=task/none
                JobAcctGatherType=jobacct_gather/none
                AccountingStorageType=accounting_storage/none
                JobCompType=jobcomp/none
                SchedulerType=sched/backfill
                SelectType=select/cons_tres
                SelectTypeParameters=CR_Core
                ReturnToService=2
                StateSaveLocation={r / "state"}
                SlurmdSpoolDir={r / "spool"}
                SlurmctldPidFile={r / "run" / "slurmctld.pid"}
                SlurmdPidFile={r / "run" / "slurmd.pid"}
                SlurmctldLogFile={r / "log" / "slurmctld.log"}
                SlurmdLogFile={r / "log" / "slurmd.log"}
                NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} {node_memory}
                PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
                """
            )
        )

    def _wait_until_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            state = (out.stdout + out.stderr).strip()
            if out.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"SLURM node not idle after {timeout:.0f} s (sinfo: {state!r}); "
            f"see the logs in {self.root / 'log'}"
        )

    def _pid(self, daemon: str) -> int | None:
        try:
            return int((self.root / "run" / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = LocalSlurmCluster(argv[1])
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
