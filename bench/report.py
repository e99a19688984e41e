"""The results as terminal tables, markdown tables and a JSON document.

Units everywhere: MiB/s = 2**20 bytes per second; ops/s = completed requests per second of wall
time; latency = time from sending a request to having read its whole response, per request.

Every case ran once per EncryptType (the Enc column); the encryption table puts the types of
each case side by side, with the cost of EncryptType 1 and 2 relative to 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.cases import LARGE, Result, size_label

UNITS = ("Enc = the EncryptType of the case's coffer: 0 none, 1 service master key, 2 KMS "
         "customer key. MiB/s = 2^20 bytes/s of object data. ops/s = requests completed per "
         "second of wall time. p50/p99 = per-request latency (send to last byte read). CPU = "
         "cores busy on average during the case (1.00 = one full core; the machine has {cpus}).")

HEADERS = ("Case", "Enc", "Done", "Time s", "MiB/s", "ops/s", "p50 ms", "p99 ms", "Server CPU",
           "Client CPU", "Note")


#: The second table: how much CPU each side spent per GiB, and the SDK's client-side ceiling.
CPU_TITLE = "CPU per GiB moved, and the client-side ceiling of the SDK cases"
CPU_HEADERS = ("Case", "Enc", "MiB/s", "Client CPU s/GiB", "Server CPU s/GiB",
               "Client 1-core MiB/s", "Ceiling MiB/s", "% of ceiling", "Before s", "After s",
               "Ceiling work (SDK, timed alone)")

CPU_NOTE = (
    "CPU s/GiB = user+system CPU seconds of the process during the case / GiB of object data "
    "moved. Client 1-core = 1024 / client CPU s/GiB: the MiB/s the benchmark process could "
    "reach with one core all to itself. Ceiling = the SDK's own per-byte work for one transfer "
    "of the case (reading the file in 1 MiB chunks and hashing it, with the SDK's passes and "
    "threads: last column), timed alone after the case: no HTTP, no server, no writing of a "
    "downloaded file. MiB/s well below the client figures, with client CPU s/GiB below the "
    "server's, means the client is not the bottleneck (on 2 cores its CPU is still CPU the "
    "server could not use). Before / After = mean seconds per transfer before its first byte "
    "moved (the Content-MD5 pass of a PutObject; HEAD or ListMultipartUploads) and after its "
    "last (the server finishing, CompleteMultipartUpload, the verifying HEAD of an upload; the "
    "in-order SHA-256 pass and the fsync of a download).")


#: The encryption table: each case at every EncryptType, side by side.
ENC_TITLE = "The cost of encryption: each case at EncryptType {types}"
#: Encryption may cost large objects at most this much of EncryptType 0's throughput (the
#: target of the issue that asked for this table).
TARGET_PCT = 15.0

ENC_NOTE = (
    "e0, e1, e2 = the case's headline rate (Unit: MiB/s, or ops/s for the 4 KiB cases) in the "
    "coffer of EncryptType 0 (none), 1 (service master key), 2 (KMS customer key). Cost = the "
    "rate relative to EncryptType 0's in the same run, in percent: negative = slower. Server "
    "CPU s/GiB = the server's user+system CPU seconds per GiB moved (not for the 4 KiB cases). "
    "FAILED = that run of the case failed; - = not measured.")


@dataclass(frozen=True)
class Cost:
    """One case at each EncryptType it ran at (a row of the encryption table; in the JSON)."""

    #: the case without its EncryptType, "put-1gib"
    case: str
    label: str
    size: int
    #: "MiB/s", or "ops/s" for the 4 KiB cases
    unit: str
    #: 64 MiB and up: the cases the target is about
    large: bool
    #: the rate at each EncryptType; None when that run failed, was skipped or moved nothing
    rates: dict[int, float | None]
    #: percent relative to EncryptType 0, for each other EncryptType (negative = slower)
    cost_pct: dict[int, float | None]
    server_cpu_s_gib: dict[int, float | None]
    failed: list[int]

    @property
    def target_met(self) -> bool | None:
        """Large cases: whether every EncryptType costs at most TARGET_PCT % (None: not a
        large case, or nothing to compare)."""
        costs = [c for c in self.cost_pct.values() if c is not None]
        if not self.large or not costs:
            return None
        return min(costs) >= -TARGET_PCT

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "target_met": self.target_met}


def encrypt_types(results: list[Result]) -> list[int]:
    """The EncryptTypes the results were measured at, in order."""
    return sorted({r.encrypt_type for r in results})


def _enc_title(types: Sequence[int]) -> str:
    names = [str(t) for t in types]
    return ENC_TITLE.format(types=", ".join(names[:-1]) + " and " + names[-1])


def _rate(r: Result) -> float | None:
    if r.error is not None or r.seconds <= 0:
        return None
    return r.ops_s if r.small else r.mib_s


def costs(results: list[Result]) -> list[Cost]:
    """The results grouped by case (in run order), each EncryptType relative to 0."""
    by_case: dict[str, dict[int, Result]] = {}
    for r in results:
        by_case.setdefault(r.case, {})[r.encrypt_type] = r
    rows = []
    for case, runs in by_case.items():
        first = next(iter(runs.values()))
        rates = {t: _rate(r) for t, r in sorted(runs.items())}
        base = rates.get(0)
        rows.append(Cost(
            case=case, label=first.label, size=first.size,
            unit="ops/s" if first.small else "MiB/s", large=first.size >= LARGE, rates=rates,
            cost_pct={t: (100 * (rate / base - 1) if rate is not None and base else None)
                      for t, rate in rates.items() if t != 0},
            server_cpu_s_gib={t: None if first.small else r.server_cpu_s_gib
                              for t, r in sorted(runs.items())},
            failed=[t for t, r in sorted(runs.items()) if r.error is not None]))
    return rows


def _enc_headers(types: Sequence[int]) -> tuple[str, ...]:
    others = [t for t in types if t != 0] if 0 in types else []
    return ("Case", "Unit", *(f"e{t}" for t in types), *(f"e{t} cost" for t in others),
            *(f"Server CPU s/GiB e{t}" for t in types),
            *((f"Large: ≤ {TARGET_PCT:.0f} % slower",) if others else ()))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def _enc_row(c: Cost, types: Sequence[int]) -> tuple[str, ...]:
    others = [t for t in types if t != 0] if 0 in types else []

    def rate(t: int) -> str:
        if t in c.failed:
            return "FAILED"
        return _num(c.rates.get(t), 0 if c.unit == "ops/s" else 1)

    met = c.target_met
    target = "-" if met is None else "met" if met else "MISSED"
    return (c.label, c.unit, *(rate(t) for t in types),
            *(_pct(c.cost_pct.get(t)) for t in others),
            *(_num(c.server_cpu_s_gib.get(t), 2) for t in types),
            *((target,) if others else ()))


def target_line(rows: list[Cost]) -> str:
    """The one-line note on the target for large objects."""
    large = [c for c in rows if c.large]
    sizes = sorted({c.size for c in large})
    judged = [c for c in large if c.target_met is not None]
    met = sum(1 for c in judged if c.target_met)
    which = ", ".join(size_label(s) for s in sizes) or "none in this run"
    verdict = (f"met by {met} of {len(judged)} large cases in this run" if judged else
               "not judged in this run (it needs EncryptType 0 and a large case)")
    return (f"Target: on large objects (64 MiB and up; here {which}) EncryptType 1 and 2 "
            f"within {TARGET_PCT:.0f} % of EncryptType 0's throughput (cost ≥ "
            f"-{TARGET_PCT:.0f} %): {verdict}.")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cpu_rows(results: list[Result]) -> list[tuple[str, ...]]:
    """The cases that move MiB (not the 4 KiB ones), whether they ran (or were cut short)."""
    rows = []
    for r in results:
        if r.small or r.bytes == 0:
            continue
        one_core = 1024 / r.client_cpu_s_gib if r.client_cpu_s_gib else None
        share = 100 * r.mib_s / r.ceiling_mib_s if r.ceiling_mib_s else None
        rows.append((r.label, str(r.encrypt_type), _num(r.mib_s, 1),
                     _num(r.client_cpu_s_gib, 2),
                     _num(r.server_cpu_s_gib, 2), _num(one_core, 0), _num(r.ceiling_mib_s, 0),
                     _num(share, 0), _num(r.before_first_byte_s, 2),
                     _num(r.after_last_byte_s, 2), r.ceiling_work or "-"))
    return rows


def _row(r: Result) -> tuple[str, ...]:
    small = r.small
    return (
        r.label,
        str(r.encrypt_type),
        f"{r.ops}/{r.planned}",
        _num(r.seconds, 2),
        _num(r.mib_s, 1),
        _num(r.ops_s, 0 if small else 2),
        _num(r.p50_ms, 2 if small else 0),
        _num(r.p99_ms, 2 if small else 0),
        _num(r.server_cpu, 2),
        _num(r.client_cpu, 2),
        _note(r),
    )


def _note(r: Result) -> str:
    """FAILED or "stopped by", then the row's own note (multipart: parts, complete ms)."""
    if r.error is not None:
        head = f"FAILED: {r.error}"
    elif r.stopped_by in ("time limit", "interrupted"):
        head = f"stopped by {r.stopped_by}"
    else:
        head = ""
    return "; ".join(x for x in (head, r.note) if x)


def summary(r: Result) -> str:
    """One line per finished case, printed above the progress bars as the run goes."""
    if r.error is not None:
        return f"[red]{r.title}: FAILED: {r.error}"
    if r.stopped_by == "skipped":
        return f"[yellow]{r.title}: {r.note or 'skipped'}"
    text = (f"{r.title}: {r.ops} ops in {r.seconds:.2f} s, {r.mib_s:,.1f} MiB/s, "
            f"{r.ops_s:,.1f} ops/s, p50 {_num(r.p50_ms, 2)} ms, p99 {_num(r.p99_ms, 2)} ms, "
            f"CPU server {_num(r.server_cpu, 2)} client {_num(r.client_cpu, 2)}")
    if r.client_cpu_s_gib is not None and not r.small:
        text += (f", CPU s/GiB client {_num(r.client_cpu_s_gib, 2)} server "
                 f"{_num(r.server_cpu_s_gib, 2)}")
    if r.ceiling_mib_s is not None:
        text += f", SDK ceiling {r.ceiling_mib_s:,.0f} MiB/s"
    if r.note:
        text += f" ({r.note})"
    return text + (f" [yellow](stopped by {r.stopped_by})" if r.stopped_by != "count" else "")


def limit_rows(limits: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if "dd_write" in limits:
        d = limits["dd_write"]
        rows.append(("Disk, sequential write + fsync (`dd bs=1M conv=fsync`)",
                     f"{d['mib_s']:,.0f} MiB/s ({d['bytes'] // 2**20} MiB in "
                     f"{d['seconds']:.2f} s)"))
    if "dd_sync_4k" in limits:
        d = limits["dd_sync_4k"]
        rows.append(("Disk, durable 4 KiB writes (`dd bs=4k oflag=dsync`)",
                     f"{d['writes_s']:,.0f} writes/s ({d['ms_per_write']:.2f} ms each)"))
    if "md5" in limits and "sha256" in limits:
        md5, sha = limits["md5"]["mib_s"], limits["sha256"]["mib_s"]
        rows.append(("hashlib MD5, one core", f"{md5:,.0f} MiB/s"))
        rows.append(("hashlib SHA-256, one core", f"{sha:,.0f} MiB/s"))
        rows.append(("MD5 then SHA-256 on one core (what PutObject does per byte)",
                     f"{1 / (1 / md5 + 1 / sha):,.0f} MiB/s"))
    return rows


def console_tables(console: Console, results: list[Result], machine: dict[str, Any],
                   limits: dict[str, Any]) -> None:
    table = Table(title="Data Coffer benchmark", title_justify="left")
    for name in HEADERS:
        table.add_column(name, justify="left" if name in ("Case", "Note") else "right")
    for r in results:
        table.add_row(*_row(r))
    console.print(table)
    types = encrypt_types(results)
    if len(types) > 1:
        rows = costs(results)
        et = Table(title=_enc_title(types), title_justify="left",
                   caption=f"{target_line(rows)}\n{ENC_NOTE}", caption_justify="left")
        for name in _enc_headers(types):
            et.add_column(name, justify="left" if name in ("Case", "Unit") else "right")
        for c in rows:
            et.add_row(*_enc_row(c, types))
        console.print(et)
    cpu_rows = _cpu_rows(results)
    if cpu_rows:
        ct = Table(title=CPU_TITLE, title_justify="left", caption=CPU_NOTE,
                   caption_justify="left")
        for name in CPU_HEADERS:
            ct.add_column(name, justify="left" if name in (CPU_HEADERS[0], CPU_HEADERS[-1])
                          else "right")
        for row in cpu_rows:
            ct.add_row(*row)
        console.print(ct)
    rows = limit_rows(limits)
    lt = Table(title="Machine limits (same run)", title_justify="left")
    lt.add_column("What")
    lt.add_column("Measured", justify="right")
    for what, value in rows:
        lt.add_row(what, value)
    if rows:
        console.print(lt)
    console.print(f"[dim]{machine.get('cpu')}, {machine.get('cpus')} CPUs, "
                  f"{machine.get('memory_gib')} GiB RAM, {machine.get('filesystem')}, "
                  f"load average at start {machine.get('load_average')}")
    console.print(f"[dim]{UNITS.format(cpus=machine.get('cpus'))}")


def markdown(results: list[Result], machine: dict[str, Any], limits: dict[str, Any],
             meta: dict[str, Any]) -> str:
    def line(cells: tuple[str, ...] | list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    kind = "quick" if meta.get("quick") else "full"
    if meta.get("interrupted"):
        kind += ", INTERRUPTED"
    types = ", ".join(str(t) for t in meta.get("encrypt_types") or encrypt_types(results))
    out = [f"Run {meta.get('started')} ({kind}, client: {meta.get('mode')}, EncryptType "
           f"{types}, commit "
           f"{meta.get('commit') or 'unknown'}): `{meta.get('command')}`", ""]
    out.append(line(HEADERS))
    out.append(line(["---"] + ["---:"] * (len(HEADERS) - 2) + ["---"]))
    out.extend(line(_row(r)) for r in results)
    types = encrypt_types(results)
    if len(types) > 1:
        rows = costs(results)
        headers = _enc_headers(types)
        out += ["", f"{_enc_title(types)}:", "", line(headers),
                line(["---", "---"] + ["---:"] * (len(headers) - 2))]
        out.extend(line(_enc_row(c, types)) for c in rows)
        out += ["", target_line(rows), "", ENC_NOTE]
    cpu_rows = _cpu_rows(results)
    if cpu_rows:
        out += ["", f"{CPU_TITLE}:", "", line(CPU_HEADERS),
                line(["---"] + ["---:"] * (len(CPU_HEADERS) - 2) + ["---"])]
        out.extend(line(row) for row in cpu_rows)
        out += ["", CPU_NOTE]
    if limits:
        out += ["", line(("Machine limit", "Measured")), line(("---", "---:"))]
        out.extend(line(row) for row in limit_rows(limits))
    out += ["", f"Machine: {machine.get('cpu')}, {machine.get('cpus')} CPUs, "
                f"{machine.get('memory_gib')} GiB RAM, kernel {machine.get('kernel')}, "
                f"Python {machine.get('python')}, data on {machine.get('filesystem')}; "
                f"load average at start {machine.get('load_average')}.",
            "", UNITS.format(cpus=machine.get("cpus")),
            "", f"Peak memory: server {_num(meta.get('server_peak_rss_mib'), 0)} MiB, "
                f"benchmark client {_num(meta.get('client_peak_rss_mib'), 0)} MiB "
                f"(resident). Whole run: {meta.get('seconds')} s.", ""]
    return "\n".join(out)


def write_json(path: Path, results: list[Result], machine: dict[str, Any],
               limits: dict[str, Any], meta: dict[str, Any],
               extra: dict[str, Any] | None = None) -> None:
    """`extra`: further top-level sections (the policy cases' `policy`)."""
    doc = {"meta": meta, "machine": machine, "limits": limits,
           "results": [r.public() for r in results],
           "encryption": {"target_pct": TARGET_PCT, "large_from_bytes": LARGE,
                          "cases": [c.public() for c in costs(results)]}, **(extra or {})}
    path.write_text(json.dumps(doc, indent=2) + "\n")
