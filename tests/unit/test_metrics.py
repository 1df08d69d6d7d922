"""What a node exports about itself besides its counters: the process (also under a unit
that hides /proc/stat), the memory it may use, its data directory's size on disk, its clock."""

import os
import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qnet.metrics import Metrics, disk_bytes, memory_limit_bytes


def samples(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def test_the_process_its_limit_its_data_and_its_clock_are_exported(tmp_path):
    (tmp_path / "chain.db").write_bytes(b"x" * 10_000)
    before = time.time()
    got = samples(Metrics(tmp_path))
    assert got["process_resident_memory_bytes"] > 0 and got["process_open_fds"] > 0
    started = got["process_start_time_seconds"]
    assert abs(started - os.stat(f"/proc/{os.getpid()}").st_ctime) < 5 and started <= before
    assert got["qnet_memory_limit_bytes"] == memory_limit_bytes()
    assert got["qnet_data_dir_bytes"] >= 10_000
    assert before <= got["qnet_node_time_seconds"] <= time.time()


def test_the_memory_limit_is_the_cgroups_else_the_machines(tmp_path):
    proc = tmp_path / "cgroup"
    fs = tmp_path / "fs"
    (fs / "system.slice" / "qnet-node.service").mkdir(parents=True)
    limit = fs / "system.slice" / "qnet-node.service" / "memory.max"
    proc.write_text("0::/system.slice/qnet-node.service\n")
    limit.write_text("4294967296\n")
    assert memory_limit_bytes(proc, fs) == 4 * 2**30
    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit.write_text("max\n")  # no MemoryMax=
    assert memory_limit_bytes(proc, fs) == machine
    proc.write_text("12:memory:/x\n")  # cgroup v1 only
    assert memory_limit_bytes(proc, fs) == machine
    assert memory_limit_bytes(tmp_path / "missing", fs) == machine


def test_disk_bytes_counts_allocated_blocks_below_the_directory_without_following_links(
    tmp_path,
):
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "a.tar.gz").write_bytes(b"y" * 50_000)
    (tmp_path / "chain.db").write_bytes(b"x" * 8_192)
    (tmp_path / "elsewhere").symlink_to("/usr")
    files = (tmp_path / "snapshots" / "a.tar.gz", tmp_path / "chain.db")
    expected = sum(os.stat(p).st_blocks * 512 for p in files)
    assert disk_bytes(tmp_path) == expected
    assert disk_bytes(tmp_path / "gone") == 0
