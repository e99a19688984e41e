"""`datacoffer cp`: files and directories to and from coffers, in parallel, resumable."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from datacoffer.cli.progress import Bars
from datacoffer.cli.remote import Remote, SizeType, is_remote, parse
from datacoffer.cli.session import Session, client_command, exit_code, usage
from datacoffer.client import Client, TransferConfig, errors
from datacoffer.client.transfer import same_content


@dataclass(frozen=True)
class Job:
    """One file to move: `upload` from `local` to `remote`, else the other way."""

    upload: bool
    local: Path
    remote: Remote
    size: int


@dataclass
class Outcome:
    job: Job
    state: str  # "copied", "skipped" (the same bytes were already there) or "failed"
    error: errors.DataCofferError | None = None
    etag: str = ""
    resumed_parts: int = 0


def _upload_jobs(source: Path, dest: Remote, recursive: bool) -> list[Job]:
    if source.is_dir():
        if not recursive:
            usage(f"{source} is a directory: use --recursive")
        prefix = dest.key if dest.is_dir else dest.key + "/"
        files = sorted(p for p in source.rglob("*") if p.is_file())
        return [Job(True, p, Remote(dest.coffer, prefix + p.relative_to(source).as_posix()),
                    p.stat().st_size) for p in files]
    if not source.is_file():
        usage(f"{source}: no such file")
    key = dest.key + source.name if dest.is_dir else dest.key
    return [Job(True, source, Remote(dest.coffer, key), source.stat().st_size)]


def _download_jobs(client: Client, source: Remote, destination: str,
                   recursive: bool) -> tuple[list[Job], list[str]]:
    """The files to fetch, and why keys under the prefix are left out."""
    dest = Path(destination)
    if not recursive:
        if not source.key or source.key.endswith("/"):
            usage(f"{source} is a prefix: use --recursive")
        info = client.head_object(source.coffer, source.key)
        into_dir = dest.is_dir() or destination.endswith(("/", os.sep))
        target = dest / source.key.rsplit("/", 1)[-1] if into_dir else dest
        return [Job(False, target, source, info.size)], []
    jobs: list[Job] = []
    left_out: list[str] = []
    taken: dict[Path, str] = {}
    root = dest.resolve()
    # a prefix is a "directory": dc://c/tree copies tree/…, never treehouse/…
    prefix = source.key if not source.key or source.key.endswith("/") else source.key + "/"
    for obj in client.list_objects(source.coffer, prefix):
        remote = Remote(source.coffer, obj.key)
        rel = obj.key[len(prefix):].lstrip("/")
        target = (dest / rel).resolve()
        if not rel or obj.key.endswith("/"):
            left_out.append(f"{remote}: a key ending in '/' names no file")
        elif root not in target.parents:
            left_out.append(f"{remote}: would land outside {dest}")
        elif target in taken:
            # e.g. a//b and a/b: one file, so only the first key (in key order) is fetched
            left_out.append(f"{remote}: {target} is already the file of {taken[target]}")
        else:
            taken[target] = str(remote)
            jobs.append(Job(False, target, remote, obj.size))
    return jobs, left_out


def _move(client: Client, job: Job, config: TransferConfig, content_type: str | None,
          advance: Callable[[int], None], cancel: threading.Event) -> Outcome:
    remote = job.remote
    try:
        if job.upload:
            result = client.upload_file(remote.coffer, remote.key, job.local, config=config,
                                        progress=advance, content_type=content_type,
                                        cancel=cancel)
        else:
            if job.local.exists() and same_content(client, remote.coffer, remote.key,
                                                   job.local):
                advance(job.size)
                return Outcome(job, "skipped")
            job.local.parent.mkdir(parents=True, exist_ok=True)
            result = client.download_file(remote.coffer, remote.key, job.local, config=config,
                                          progress=advance, cancel=cancel)
        return Outcome(job, "copied", etag=result.etag, resumed_parts=result.resumed_parts)
    except errors.Conflict as exc:
        # immutable: a key already holding these very bytes is a copy already made
        if job.upload and exc.code.startswith("ObjectAlreadyExists") and _same(
                client, job):
            advance(job.size)
            return Outcome(job, "skipped")
        return Outcome(job, "failed", exc)
    except errors.DataCofferError as exc:
        return Outcome(job, "failed", exc)
    except OSError as exc:
        return Outcome(job, "failed", errors.DataCofferError(f"{job.local}: {exc.strerror}"))


def _same(client: Client, job: Job) -> bool:
    """Whether the object already holds the file's bytes; no when that cannot be told."""
    try:
        return same_content(client, job.remote.coffer, job.remote.key, job.local)
    except (errors.DataCofferError, OSError):
        return False


@click.command("cp")
@click.argument("source")
@click.argument("destination")
@click.option("-r", "--recursive", is_flag=True,
              help="Copy a directory, or every object under a prefix.")
@click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Transfers in flight at once: parts of one file, or several files.")
@click.option("--part-size", type=SizeType(minimum=1024 * 1024), default="16M",
              show_default=True,
              help="Size of a multipart upload's parts and of parallel download ranges "
                   "(at least 1M).")
@click.option("--threshold", type=SizeType(minimum=1), default="64M", show_default=True,
              help="Files above this go in parts (upload) or ranges (download).")
@click.option("--content-type", default=None, help="Content-Type of uploaded objects.")
@click.option("--progress/--no-progress", default=None, envvar="DATACOFFER_PROGRESS",
              help="Show progress bars (default: when standard error is a terminal; also "
                   "DATACOFFER_PROGRESS=1 or 0).")
@client_command
def copy(session: Session, source: str, destination: str, recursive: bool, parallel: int,
         part_size: int, threshold: int, content_type: str | None,
         progress: bool | None) -> None:
    """Copy files to a coffer, or objects to files.

    Uploads are verified (each part's MD5 and the object's SHA-256) and resumable: if a copy
    is interrupted, run the same command again. Parts already stored are kept, and files
    already stored with the same bytes are skipped (objects are immutable: a key that holds
    other bytes is an error). Downloads are verified against the object's SHA-256 and land
    under their name only when complete.

    \b
    Examples:
      datacoffer cp backup.tar dc://vault-1250000000/2026/backup.tar
      datacoffer cp backup.tar dc://vault-1250000000/2026/          (key 2026/backup.tar)
      datacoffer cp -r ./evidence dc://vault-1250000000/audit/ --parallel 8
      datacoffer cp dc://vault-1250000000/2026/backup.tar ./restore/
      datacoffer cp -r dc://vault-1250000000/audit/ ./evidence-copy
    """
    if is_remote(source) == is_remote(destination):
        usage("one of SOURCE and DESTINATION must be a dc://coffer/key address, the other "
              "a local path")
    # --parallel bounds the transfers in flight: files at once times parts of each
    session.max_connections = 2 * parallel + 2
    client = session.client
    left_out: list[str] = []
    if is_remote(destination):
        jobs = _upload_jobs(Path(source), parse(destination), recursive)
    else:
        jobs, left_out = _download_jobs(client, parse(source), destination, recursive)
    for note in left_out:
        click.echo(f"skipped {note}", err=True)
    files_at_once = max(1, min(parallel, len(jobs)))
    config = TransferConfig(threshold=threshold, part_size=part_size,
                            concurrency=max(1, parallel // files_at_once))
    started = time.monotonic()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    # the files move in worker threads: Ctrl-C reaches this thread, which tells them to stop
    cancel = threading.Event()
    with Bars(progress, sum(j.size for j in jobs), len(jobs)) as bars:
        def run(job: Job) -> None:
            if cancel.is_set():
                return
            name = str(job.remote) if job.upload else str(job.local)
            advance, done = bars.file(name, job.size)
            outcome = _move(client, job, config, content_type, advance, cancel)
            done()
            if outcome.error is not None and len(jobs) > 1:
                bars.note(f"failed: {job.local} -> {job.remote}: {outcome.error}"
                          if job.upload else f"failed: {job.remote} -> {job.local}: "
                          f"{outcome.error}")
            with lock:
                outcomes.append(outcome)

        order = {id(job): i for i, job in enumerate(jobs)}

        pool = ThreadPoolExecutor(max_workers=files_at_once)
        try:
            list(pool.map(run, jobs))
        except BaseException:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    outcomes.sort(key=lambda o: order[id(o.job)])  # the first failure is the first file's
    _report(session, outcomes, time.monotonic() - started)


def _report(session: Session, outcomes: list[Outcome], seconds: float) -> None:
    failed = [o for o in outcomes if o.error is not None]
    if len(outcomes) == 1 and failed and failed[0].error is not None:
        session.fail(failed[0].error)
    if session.json:
        session.emit([{
            "Source": str(o.job.local if o.job.upload else o.job.remote),
            "Destination": str(o.job.remote if o.job.upload else o.job.local),
            "Size": o.job.size, "State": o.state, "ETag": o.etag,
            "ResumedParts": o.resumed_parts,
            **({"Error": {"Code": o.error.code, "Message": o.error.message,
                          "RequestId": o.error.request_id}} if o.error else {}),
        } for o in outcomes])
    else:
        moved = sum(o.job.size for o in outcomes if o.state == "copied")
        skipped = sum(1 for o in outcomes if o.state == "skipped")
        copied = sum(1 for o in outcomes if o.state == "copied")
        rate = moved / seconds / 2**20 if seconds > 0 else 0.0
        line = (f"copied {copied} file{'s' if copied != 1 else ''} ({_human(moved)}) "
                f"in {seconds:.1f} s, {rate:.0f} MiB/s")
        resumed = sum(o.resumed_parts for o in outcomes)
        line += f"; {resumed} parts resumed" if resumed else ""
        line += f"; {skipped} already there" if skipped else ""
        line += f"; {len(failed)} failed" if failed else ""
        session.say(line)
    if failed and failed[0].error is not None:
        raise SystemExit(exit_code(failed[0].error))


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"
