"""Thread counts as llama.cpp's tools choose them: physical cores within the affinity mask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from termlm import sysinfo


def _cpu(root: Path, cpu: int, package: int, core: int) -> None:
    topology = root / f"cpu{cpu}" / "topology"
    topology.mkdir(parents=True)
    (topology / "physical_package_id").write_text(f"{package}\n")
    (topology / "core_id").write_text(f"{core}\n")


def test_smt_siblings_count_once(tmp_path: Path) -> None:
    for cpu in range(8):  # 4 cores with 2 threads each, siblings numbered n and n+4
        _cpu(tmp_path, cpu, 0, cpu % 4)
    assert sysinfo.physical_cores(list(range(8)), root=tmp_path) == 4
    assert sysinfo.physical_cores([0, 4], root=tmp_path) == 1  # one core's two threads
    assert sysinfo.physical_cores([0, 1, 4], root=tmp_path) == 2


def test_same_core_id_on_two_sockets_is_two_cores(tmp_path: Path) -> None:
    _cpu(tmp_path, 0, 0, 0)
    _cpu(tmp_path, 1, 1, 0)
    assert sysinfo.physical_cores([0, 1], root=tmp_path) == 2


def test_unreadable_topology_counts_logical_cpus(tmp_path: Path) -> None:
    assert sysinfo.physical_cores([0, 1, 2], root=tmp_path / "missing") == 3


def test_default_threads_follow_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert sysinfo.allowed_cpus() == [0]
    assert sysinfo.default_threads() == 1


def test_memory_and_disk_facts_are_numbers(tmp_path: Path) -> None:
    available, total = sysinfo.available_ram(), sysinfo.total_ram()
    assert available is not None and total is not None and 0 < available <= total
    assert (sysinfo.free_disk(tmp_path / "not" / "there") or 0) > 0  # nearest existing parent
