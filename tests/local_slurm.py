"""A single-node SLURM cluster on localhost for the tests (Debian's slurm-wlm + munge, as root).

`python tests/local_slurm.py start|stop|status` does the same by hand. It writes /etc/slurm/slurm.conf only
when there is none or it is one this script wrote, so it never touches a real cluster's configuration.
"""
import os, shutil, socket, subprocess, sys, time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by recursive_loops tests/local_slurm.py"
DAEMONS = ("munged", "slurmctld", "slurmd")


def why_not() -> str | None:
    "Why a local cluster cannot be started here (None: it can)."
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing: return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0: return "starting slurmctld and slurmd needs root"
    if CONF.exists() and MARK not in CONF.read_text(): return f"{CONF} belongs to another cluster; not touching it"
    return None


def _conf() -> str:
    host = socket.gethostname().split(".")[0]
    mem_mb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]) // 1024
    return f"""{MARK}
ClusterName=local
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory={int(mem_mb * 0.9)} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _up() -> bool:
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.strip() in ("idle", "mixed", "allocated") for s in r.stdout.splitlines())


def running(daemon: str) -> bool: return subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode == 0


def start(timeout: float = 60) -> list[str]:
    "Start munged, slurmctld and slurmd (each only if not running) and wait until the node is up; the daemons this call started."
    reason = why_not()
    if reason: raise RuntimeError(reason)
    if _up(): return []
    started = [d for d in DAEMONS if not running(d)]
    for d in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm", "/run/munge"): Path(d).mkdir(parents=True, exist_ok=True)
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], check=True); shutil.chown("/etc/munge/munge.key", "munge", "munge")
    shutil.chown("/run/munge", "munge", "munge")
    CONF.write_text(_conf())
    if "munged" in started: subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    for d in ("slurmctld", "slurmd"):
        if d in started: subprocess.run([d], check=True)
    t0 = time.time()
    while not _up():
        if time.time() - t0 > timeout:
            logs = "".join(Path(f"/var/log/slurm/{d}.log").read_text()[-1500:] for d in ("slurmctld", "slurmd") if Path(f"/var/log/slurm/{d}.log").exists())
            raise RuntimeError(f"the local SLURM node did not come up in {timeout:.0f} s:\n{logs}")
        time.sleep(0.5)
    return started


def stop(daemons=DAEMONS, timeout: float = 30) -> list[str]:
    "Stop `daemons` (default all three, munged last) and wait until they are gone; those still running after `timeout`."
    if {"slurmctld", "slurmd"} & set(daemons): subprocess.run(["scontrol", "shutdown"], capture_output=True)
    for d in ("slurmd", "slurmctld", "munged"):
        if d in daemons: subprocess.run(["pkill", "-x", d], capture_output=True)
    t0 = time.time()
    while (left := [d for d in daemons if running(d)]) and time.time() - t0 < timeout: time.sleep(0.5)
    return left


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "status"
    if cmd == "start": t = time.time(); start(); print(f"local SLURM up in {time.time() - t:.1f} s"); subprocess.run(["sinfo"])
    elif cmd == "stop": left = stop(); print(f"still running: {', '.join(left)}" if left else "stopped: munged, slurmctld, slurmd")
    else: print(why_not() or ("up" if _up() else "down"))
