"""benchmarks/machine.py: how much CPU other processes took while a benchmark ran."""

import os
import subprocess
import sys

from benchmarks.machine import CpuSample, other_load, sample_cpu

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    pass"


def test_a_busy_child_process_counts_as_other_load():
    start = sample_cpu()
    subprocess.run([sys.executable, "-c", SPIN], check=True)
    end = sample_cpu()
    line, busy = other_load(start, end, cores=1)
    others = float(line.split("time: ")[1].split(" core-s")[0])
    # The child's 1.5 s (other tests running alongside only add to it), not our own time.
    assert others >= 1.3, line
    assert end.own - start.own < 0.5
    assert busy


def test_other_load_is_the_machines_busy_time_less_our_own():
    start = CpuSample(wall=100.0, busy=50.0, steal=2.0, own=10.0)
    # 10 s on 2 cores: the machine was busy 19 core-s, 18 of them ours.
    line, busy = other_load(start, CpuSample(110.0, 69.0, 2.0, 28.0), cores=2)
    assert line.startswith("Other processes' CPU time: 1.0 core-s of 20.0 (5.0% of the machine)")
    assert "stolen by the hypervisor: 0.0 core-s (0.0%)" in line
    assert not busy
    line, busy = other_load(start, CpuSample(110.0, 69.0, 3.5, 28.0), cores=2)
    assert "stolen by the hypervisor: 1.5 core-s (7.5%)" in line
    assert busy


def test_the_benchmarks_own_worker_processes_are_not_other_load():
    start = CpuSample(wall=100.0, busy=50.0, steal=2.0, own=10.0)
    # 19 busy core-s: 9 ours, 9 our workers' (a compared library's step), 1 someone else's.
    line, _ = other_load(start, CpuSample(110.0, 69.0, 2.0, 19.0), cores=2, ours_elsewhere=9.0)
    assert line.startswith("Other processes' CPU time: 1.0 core-s of 20.0")


def test_the_machines_time_is_read_from_proc_stat_in_clock_ticks(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in USER_HZ ticks.
    stat.write_text("cpu  1000 10 300 5000 20 5 5 40 0 0\ncpu0 500 5 150 2500 10 2 2 20 0 0\n")
    sample = sample_cpu(str(stat))
    tick = os.sysconf("SC_CLK_TCK")
    assert abs(sample.busy - (1000 + 10 + 300 + 5 + 5) / tick) < 1e-9
    assert abs(sample.steal - 40 / tick) < 1e-9


def test_without_proc_stat_the_other_load_is_unknown_and_no_warning(tmp_path):
    missing = str(tmp_path / "no-such-stat")
    start, end = sample_cpu(missing), sample_cpu(missing)
    assert start.busy is None
    assert other_load(start, end, cores=2) == (
        "Other processes' CPU time: unknown (no /proc/stat)",
        False,
    )
