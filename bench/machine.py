"""The machine's own limits, measured in the same run, so the server's numbers can be judged.

- sequential write with `dd … conv=fsync` in the data directory's filesystem: the ceiling of a
  large PutObject (the server fsyncs every blob before it answers);
- 4 KiB synchronous writes (`dd … oflag=dsync`): how many durable small writes per second the
  disk takes, the ceiling of small PutObjects (each one fsyncs its blob, its directory and
  two SQLite commits);
- hashlib MD5 and SHA-256 on one core: PutObject computes both over every byte, GetObject
  SHA-256, so their speed bounds the server's per-request throughput.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
DD_TIMEOUT = 300.0
_DD_LINE = re.compile(r"^(\d+) bytes .* copied, ([\d.,]+) s", re.MULTILINE)


def _run_dd(args: list[str]) -> tuple[int, float]:
    """Run dd and parse "N bytes (...) copied, S s, ..." from its report."""
    done = subprocess.run(["dd", *args], capture_output=True, text=True, timeout=DD_TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False,
                          env={**os.environ, "LC_ALL": "C"})
    match = _DD_LINE.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"dd {' '.join(args)} failed: {done.stderr.strip()}")
    return int(match.group(1)), float(match.group(2).replace(",", "."))


def _dd_into(target: Path, args: list[str]) -> tuple[int, float]:
    """dd zeros into `target` (removed afterwards): bytes written and seconds taken."""
    try:
        return _run_dd(["if=/dev/zero", f"of={target}", *args])
    finally:
        target.unlink(missing_ok=True)


def dd_write(directory: Path, mib: int) -> dict[str, Any]:
    """Sequential 1 MiB writes, one fsync at the end: MiB/s of durable streaming writes."""
    size, seconds = _dd_into(directory / "dd-write.test", ["bs=1M", f"count={mib}",
                                                           "conv=fsync"])
    return {"command": f"dd if=/dev/zero of=<data dir>/dd-write.test bs=1M count={mib} "
                       "conv=fsync",
            "bytes": size, "seconds": seconds, "mib_s": size / MIB / seconds}


def dd_sync_small(directory: Path, count: int) -> dict[str, Any]:
    """4 KiB writes each made durable before the next: durable small writes per second."""
    size, seconds = _dd_into(directory / "dd-dsync.test", ["bs=4k", f"count={count}",
                                                           "oflag=dsync"])
    writes = size // 4096
    return {"command": f"dd if=/dev/zero of=<data dir>/dd-dsync.test bs=4k count={count} "
                       "oflag=dsync",
            "writes": writes, "seconds": seconds, "writes_s": writes / seconds,
            "ms_per_write": seconds * 1000 / max(writes, 1)}


def hash_speed(name: str, total_mib: int = 256) -> dict[str, Any]:
    """MiB/s of one hashlib algorithm on one core, over a reused 1 MiB buffer."""
    buf = os.urandom(MIB)
    h = hashlib.new(name)
    start = time.perf_counter()
    for _ in range(total_mib):
        h.update(buf)
    h.digest()
    seconds = time.perf_counter() - start
    return {"algorithm": name, "mib": total_mib, "seconds": seconds,
            "mib_s": total_mib / seconds}


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts), e.g. ext4 or tmpfs."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, f"{fields[2]} ({fields[0]} on {point})"
    return kind


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def info(data_dir: Path) -> dict[str, Any]:
    """What the numbers were measured on."""
    mem = _memory_gib()
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem is not None else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "filesystem": filesystem(data_dir),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def limits(data_dir: Path, *, quick: bool) -> dict[str, Any]:
    """All the machine's limits, measured in the benchmark's data directory."""
    return {
        "dd_write": dd_write(data_dir, 256 if quick else 1024),
        "dd_sync_4k": dd_sync_small(data_dir, 200 if quick else 1000),
        "md5": hash_speed("md5"),
        "sha256": hash_speed("sha256"),
    }
