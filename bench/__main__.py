"""`python -m bench`: start a server, measure PutObject/GetObject and multipart, print a table.

The large objects (1 GiB, multipart) move through the project's SDK (`datacoffer.client`) from
and to real files; the smaller ones through the bench's own raw client. Every case runs once per
EncryptType (--encrypt-types, default 0,1,2), each in a coffer of that type, and a table puts
the types side by side.

See bench/README.md for what each number means. Everything runs on 127.0.0.1, in a temporary
data directory that is removed at the end (also after Ctrl-C) unless --keep is given.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from bench import machine, policy, report
from bench.cases import (
    ENCRYPT_TYPES,
    GIB,
    MIB,
    Case,
    Mode,
    Result,
    Runner,
    disk_peak,
    plan,
)
from bench.server import BenchServer

#: The client that gave the higher numbers on the development machine (see docs/performance.md).
DEFAULT_MODE: Mode = "threads"


class MiBSpeed(ProgressColumn):
    """Transfer speed in MiB/s (rich's own column uses decimal MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        text = "" if speed is None else f"{speed / MIB:,.1f} MiB/s"
        return Text(text, style="progress.data.speed")


def _encrypt_types(text: str) -> tuple[int, ...]:
    """--encrypt-types: comma-separated EncryptTypes, run in the order given, once each."""
    types: list[int] = []
    for item in (x.strip() for x in text.split(",")):
        if item not in {str(t) for t in ENCRYPT_TYPES}:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an EncryptType (one of {', '.join(map(str, ENCRYPT_TYPES))})")
        if int(item) not in types:
            types.append(int(item))
    return tuple(types)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small counts, 128 MiB instead of 1 GiB objects, a 256 MiB multipart "
                        "object: about two minutes with all three EncryptTypes, for trying it")
    p.add_argument("--json", type=Path, metavar="FILE", help="save all results as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write the tables as markdown")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary data directory (and server.log) at the end")
    p.add_argument("--dir", type=Path, metavar="PARENT",
                   help="create the temporary data directory under PARENT (choose the disk "
                        "to measure; default: the system temp dir)")
    p.add_argument("--mode", choices=("threads", "async"), default=DEFAULT_MODE,
                   help="client: one thread + httpx.Client per concurrent client, or asyncio "
                        f"+ httpx.AsyncClient (default {DEFAULT_MODE})")
    p.add_argument("--encrypt-types", type=_encrypt_types, metavar="LIST",
                   default=ENCRYPT_TYPES,
                   help="run every case once per EncryptType in LIST, each in its own coffer "
                        "of that type: 0 none, 1 service master key, 2 KMS customer key "
                        f"(default {','.join(map(str, ENCRYPT_TYPES))})")
    p.add_argument("--cases", metavar="NAMES",
                   help="comma-separated case names or glob patterns, e.g. "
                        "'*-1mib,*-4kib-c16' (each at every --encrypt-types) or 'put-1gib@e2' "
                        "(a pattern with '@' matches the name with its type); a GET case needs "
                        "its PUT case; see README")
    p.add_argument("--no-limits", action="store_true",
                   help="skip measuring the machine's limits (dd, hashlib; the SDK cases' "
                        "client-side ceiling is measured anyway)")
    return p.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP are handled like Ctrl-C, so the cleanup in `finally` blocks runs."""
    raise KeyboardInterrupt


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], capture_output=True,
                              text=True, timeout=10, cwd=Path(__file__).parent, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _commit() -> str | None:
    """The measured code: HEAD, with "+dirty" when tracked files differ (read-only git)."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def _matches(case: Case, pattern: str) -> bool:
    """A pattern with "@" is matched against the case's full name ("put-1gib@e2",
    "*@e1"), one without against its name without the type ("put-1gib": at every type)."""
    return fnmatch.fnmatchcase(case.name if "@" in pattern else case.base, pattern)


def _selected(cases: list[Case], names: str | None) -> tuple[list[Case], list[str]]:
    """The cases that match one of the comma-separated glob patterns, and the patterns that
    match none."""
    if not names:
        return cases, []
    patterns = [n.strip().lower() for n in names.split(",") if n.strip()]
    unused = [p for p in patterns if not any(_matches(c, p) for c in cases)]
    return [c for c in cases if any(_matches(c, p) for p in patterns)], unused


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Not a terminal (make bench > file): a wide table instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    cases, unused = _selected(plan(quick=args.quick, encrypt_types=args.encrypt_types),
                              args.cases)
    # the policy cases (bench/policy.py): no EncryptType, after the others
    policy_cases = policy.selected(args.cases)
    for pattern in (p for p in unused if not policy.matches(p)):
        console.print(f"[yellow]--cases {pattern!r} matches no case of this run (--quick and "
                      f"--encrypt-types {','.join(map(str, args.encrypt_types))} considered)")
    if not cases and not policy_cases:
        console.print("[red]no case matches --cases")
        return 2
    results: list[Result] = []
    policy_run: policy.PolicyRun | None = None
    limits: dict[str, Any] = {}
    info: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick, "mode": args.mode, "commit": _commit(),
        "encrypt_types": sorted({c.encrypt_type for c in cases}),
        "command": shlex.join(["python", "-m", "bench",
                              *(argv if argv is not None else sys.argv[1:])]),
    }
    interrupted = False
    began = time.monotonic()
    try:
        with BenchServer(args.dir, keep=args.keep) as server:
            console.print(f"server pid {server.pid} on {server.base_url}, data in "
                          f"{server.data_dir}")
            info = machine.info(server.data_dir)
            peak, free = disk_peak(cases), shutil.disk_usage(server.data_dir).free
            meta["disk_peak_gib"] = round(peak / GIB, 2)
            if free < peak:
                console.print(f"[yellow]this run keeps up to {peak / GIB:,.1f} GiB in "
                              f"{server.root} at once, the disk has {free / GIB:,.1f} GiB "
                              "free: use --dir, fewer --encrypt-types or --cases")
            if info["filesystem"].startswith("tmpfs"):
                console.print("[yellow]the data directory is on tmpfs: disk numbers mean "
                              "memory; use --dir to choose a real disk")
            if not args.no_limits:
                with console.status("measuring the machine's limits (dd, hashlib)"):
                    limits = machine.limits(server.data_dir, quick=args.quick)
                for what, value in report.limit_rows(limits):
                    console.print(f"  {what}: {value}")
            progress = Progress(
                TextColumn("{task.description:<18}"), BarColumn(bar_width=24),
                DownloadColumn(binary_units=True), MiBSpeed(),
                TextColumn("{task.fields[ops]}/{task.fields[planned]} ops"),
                TimeElapsedColumn(), console=console)
            runner = Runner(server, progress, mode=args.mode)
            types = list(dict.fromkeys(c.encrypt_type for c in cases))
            with console.status(f"making the coffers of EncryptType "
                                f"{', '.join(map(str, types))}"):
                runner.setup(types)
            meta["coffers"] = {str(t): name for t, name in runner.coffers.items()}
            if runner.customer_key is not None:
                meta["kms_key"] = {"KeyId": runner.customer_key.key_id,
                                   "KeyRegion": runner.customer_key.region}
            with progress:
                for case in cases:
                    result = runner.run(case)
                    results.append(result)
                    progress.console.print(report.summary(result))
                    if not server.alive():
                        raise RuntimeError(f"the server died:\n{server.log_tail()}")
                if policy_cases:
                    policy_run = policy.PolicyBench(server, progress, mode=args.mode,
                                                    quick=args.quick).run(policy_cases)
                    if not server.alive():
                        raise RuntimeError(f"the server died:\n{server.log_tail()}")
            meta["server_peak_rss_mib"] = server.peak_rss_mib()
            if args.keep:
                console.print(f"kept {server.root} (server log: {server.log_path})")
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: the server is stopped and its directory removed"
                      + (" (kept: --keep)" if args.keep else ""))
    meta["seconds"] = round(time.monotonic() - began, 1)
    # ru_maxrss is in KiB on Linux: shows that no object was held in the client's memory.
    meta["client_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    meta["interrupted"] = interrupted
    if results:
        report.console_tables(console, results, info, limits)
    if policy_run is not None:
        policy.console_tables(console, policy_run)
    if results or policy_run is not None:
        extra = {"policy": policy_run.public()} if policy_run is not None else {}
        if args.markdown:
            text = report.markdown(results, info, limits, meta) if results else ""
            if policy_run is not None:
                text += "\n" + policy.markdown(policy_run)
            args.markdown.write_text(text)
            console.print(f"markdown written to {args.markdown}")
        if args.json:
            report.write_json(args.json, results, info, limits, meta, extra)
            console.print(f"JSON written to {args.json}")
    if interrupted:
        return 130
    failed = any(r.error for r in results) or (policy_run is not None and policy_run.failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
