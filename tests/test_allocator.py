"""The malloc report that train.py and the benchmarks print (transformer/allocator.py)."""

import os
import subprocess
import sys

import pytest

from transformer.allocator import cpu_allocator_hint, current_allocator, find_tcmalloc

REPORT = (
    "from transformer.allocator import current_allocator, cpu_allocator_hint;"
    "print(current_allocator()); print(cpu_allocator_hint('cpu'))"
)


def report(preload: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    out = subprocess.run(
        [sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_a_plain_process_runs_glibc_malloc_and_is_told_how_to_preload_tcmalloc():
    name, hint = report(None)
    assert name == "glibc malloc"
    assert "LD_PRELOAD=" in hint and "libtcmalloc_minimal.so.4" in hint
    tcmalloc = find_tcmalloc()
    if tcmalloc:  # The hint names the library where it is installed.
        assert f"LD_PRELOAD={tcmalloc} " in hint


@pytest.mark.skipif(find_tcmalloc() is None, reason="libtcmalloc_minimal is not installed")
def test_a_process_with_tcmalloc_preloaded_reports_it_and_gets_no_hint():
    assert report(find_tcmalloc()) == ["tcmalloc", "None"]


def test_allocators_are_recognised_by_the_libraries_mapped(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n"
        "7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /usr/lib/libjemalloc.so.2\n"
        "7f0000004000-7f0000005000 rw-p 00000000 00:00 0 [heap]\n"
    )
    assert current_allocator(str(maps)) == "jemalloc"
    maps.write_text("7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n")
    assert current_allocator(str(maps)) == "glibc malloc"
    assert current_allocator(str(tmp_path / "absent")) == "system malloc"


def test_accelerator_runs_get_no_allocator_hint():
    assert cpu_allocator_hint("gpu") is None and cpu_allocator_hint("tpu") is None
