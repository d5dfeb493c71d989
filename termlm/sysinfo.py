"""Facts about this machine that need no native library: cores, memory, disk.

Thread counts follow llama.cpp's own tools: one thread per physical core, counted
among the CPUs this process may run on (its affinity mask, which containers and
``taskset`` narrow).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")


def allowed_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity call
        return list(range(os.cpu_count() or 1))


def _core_of(cpu: int, root: Path) -> tuple[str, str] | None:
    topology = root / f"cpu{cpu}" / "topology"
    try:
        package = (topology / "physical_package_id").read_text().strip()
        core = (topology / "core_id").read_text().strip()
    except OSError:
        return None
    return package, core


def physical_cores(cpus: list[int] | None = None, *, root: Path = _SYS_CPU) -> int:
    """Physical cores among ``cpus`` (default: the allowed ones); SMT siblings count once.

    Where the topology cannot be read (not Linux), every logical CPU counts.
    """
    cpus = allowed_cpus() if cpus is None else cpus
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        core = _core_of(cpu, root)
        if core is None:
            return max(1, len(cpus))
        cores.add(core)
    return max(1, len(cores))


def default_threads() -> int:
    """Threads for generation and for batches when ``--threads`` is not given."""
    return physical_cores()


def available_ram() -> int | None:
    """Bytes of memory available to new work (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fp:
            for line in fp:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def total_ram() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def free_disk(path: Path) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
