"""The policy cases: what a coffer policy costs per request (`--cases 'policy-*'`).

A realistic policy of 100 statements (security.md, "Coffer policies"): one distinct principal
per statement, wildcard actions (`*Object`, `Get*`, `*`) or a name (`GetObject`), key-pattern
resources (`t06/*`, `t07/*.csv`, `t08/in/*`; one in 20 names the region), half of them with a
condition (`date_less_than`, `ip_equal` or `ip_not_equal`), two explicit denies (statements 2
and 61). It is nearly as large as a policy may be: the server refuses a document over 20 KiB,
which leaves about 200 bytes per statement.

In-process, timed with `time.perf_counter_ns` around each call, over many iterations, with the
garbage collector off during the timed loop (as `timeit` does); every answer is checked:

- `policy-parse`: `policy.parse` of the document with the server's checks (its regions);
- `policy-decide-last`: `Policy.decide` for a request that the last statement allows;
- `policy-decide-none`: a request no statement matches: the sub-account asking for a key
  outside its grant (only the statements naming it are looked at), and the worst case by
  construction, a policy whose 100 statements all name the requester and its action (each
  one then also tries its key pattern);
- `policy-decide-deny`: a request denied by statement 2 (the scan stops there);
- `policy-access`: `access.allowed` end to end, on the bench server's own installation opened
  in-process (as the admin commands open it): the coffer's look-up (its policy joined) plus
  the decision for the sub-account (what a request pays), the decision alone, and the owner's
  root (no policy consulted).

Over HTTP, with the raw client and the Runner of the other cases (`policy-get-4kib-c1`,
`policy-get-4kib-c16`): GET 4 KiB as the owner's root, then as a sub-account that the same
policy's last statement grants GetObject; the difference is the policy's cost per request.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench import report
from bench.cases import KIB, Case, Mode, Result, Runner, percentile
from bench.client import BUFFER, BenchError, Signer
from bench.server import REGION, Account, BenchServer
from datacoffer import config
from datacoffer.client import Client, RetryPolicy, errors
from datacoffer.core import access
from datacoffer.core import policy as language
from datacoffer.core.conditions import Context, client_address
from datacoffer.installation import Installation

STATEMENTS = 100
#: the UIN of statement i's sub-account is TEAM_UIN + i (the last one is the bench's real one)
TEAM_UIN = 3000000000
#: the explicit denies: statement index -> the key pattern it denies
DENIES = {1: "private/*", 60: "locked/*"}
#: One statement in CONDITION_EVERY has a condition (half of them).
CONDITION_EVERY = 2
#: where the in-process requests come from (inside the `ip_equal` conditions)
CLIENT_IP = "127.0.0.1"
OBJECTS = 64
SIZE = 4 * KIB

#: The cases of this module, in run order, and what each measures (`--cases` patterns match
#: these names; a pattern with "@" matches none of them: they have no EncryptType).
CASES: dict[str, str] = {
    "policy-parse": "policy.parse of the 100-statement document, with the server's checks",
    "policy-decide-last": "Policy.decide: a request the last statement allows",
    "policy-decide-none": "Policy.decide: a request no statement matches",
    "policy-decide-deny": "Policy.decide: a request statement 2 denies",
    "policy-access": "access.allowed end to end, in-process on the bench server's installation",
    "policy-get-4kib-c1": "GET 4 KiB, 1 client: owner's root, then the granted sub-account",
    "policy-get-4kib-c16": "GET 4 KiB, 16 clients: owner's root, then the granted sub-account",
}

#: (iterations, time limit in seconds) of each kind of in-process timing, full and --quick
FULL = {"parse": (2000, 30.0), "decide": (200_000, 20.0), "access": (50_000, 20.0)}
QUICK = {"parse": (200, 5.0), "decide": (20_000, 5.0), "access": (5_000, 5.0)}
#: (requests, time limit in seconds) of each HTTP case, full and --quick, by client count
HTTP_FULL = {1: (2000, 60.0), 16: (4000, 60.0)}
HTTP_QUICK = {1: (400, 10.0), 16: (800, 10.0)}

TITLE = "Policy decisions, in-process (µs per call)"
NOTE = ("Median / p99 / mean = microseconds per call, timed one call at a time with "
        "time.perf_counter_ns (the timer and a lambda included, about 0.1 µs), garbage "
        "collector off; Answer = what every call returned, checked. The policy has 100 "
        "statements (one distinct principal each, wildcard actions, key-pattern resources, a "
        "half with an ip or date condition, denies in statements 2 and 61).")
HTTP_TITLE = "The cost of a 100-statement policy over HTTP: GET 4 KiB, owner vs sub-account"
HTTP_HEADERS = ("Case", "Identity", "Done", "Time s", "ops/s", "p50 ms", "p99 ms", "Server CPU",
                "Server CPU µs/req", "Note")
DECISION_HEADERS = ("Case", "What", "Answer", "Iterations", "Time s", "Median µs", "p99 µs",
                    "Mean µs")


def matches(pattern: str) -> bool:
    """Whether a --cases pattern selects one of the policy cases."""
    return any(fnmatch.fnmatchcase(name, pattern.strip().lower()) for name in CASES)


def selected(patterns: str | None) -> list[str]:
    """The policy cases the comma-separated --cases patterns select (all without --cases)."""
    if not patterns:
        return list(CASES)
    wanted = [p.strip().lower() for p in patterns.split(",") if p.strip()]
    return [n for n in CASES if any(fnmatch.fnmatchcase(n, p) for p in wanted)]


# -- the policy ----------------------------------------------------------------------------


#: The Action of statement i is ACTIONS[i % 4]: wildcards or a name, each granting GetObject.
ACTIONS = ("name/cdcs:*Object", "name/cdcs:Get*", "name/cdcs:GetObject", "name/cdcs:*")


def prefix(i: int) -> str:
    """Statement i's part of the coffer: the keys under `t07/` for statement 8."""
    return f"t{i:02d}"


def _pattern(i: int) -> str:
    if i in DENIES:
        return DENIES[i]
    return ("*", "*.csv", "in/*")[i % 3]


def _condition(i: int) -> dict[str, dict[str, str]] | None:
    """One statement in CONDITION_EVERY has a condition (the last one among them), one that
    holds for the in-process CLIENT_IP and for the HTTP cases' 127.0.0.1."""
    if i % CONDITION_EVERY != CONDITION_EVERY - 1:
        return None
    return ({"date_less_than": {"qcs:current_time": "2099-01-01T00:00:00Z"}},
            {"ip_equal": {"qcs:ip": "127.0.0.0/8"}},
            {"ip_not_equal": {"qcs:ip": "192.0.2.0/24"}})[i // CONDITION_EVERY % 3]


def document(owner_uin: str, app_id: str, coffer: str, last: str,
             everyone: str | None = None) -> dict[str, Any]:
    """The 100-statement policy; statement 100 names `last` (a principal). With `everyone`,
    every statement names that principal instead (the worst case of a scan)."""
    statements = []
    for i in range(STATEMENTS):
        who = everyone or (last if i == STATEMENTS - 1
                           else language.principal_of(owner_uin, str(TEAM_UIN + i)))
        region = REGION if i % 20 == 5 else ""
        statement: dict[str, Any] = {
            "Principal": {"qcs": who}, "Effect": "deny" if i in DENIES else "allow",
            "Action": ACTIONS[i % 4],
            "Resource": f"qcs::cdcs:{region}:uid/{app_id}:{coffer}/{prefix(i)}/{_pattern(i)}"}
        condition = _condition(i)
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    return {"version": "2.0", "Statement": statements}


def encode(doc: dict[str, Any]) -> bytes:
    """The document as the bench sends it (compact JSON), checked to be at most 20 KiB."""
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if len(raw) > language.MAX_DOCUMENT:
        raise BenchError(f"the bench's policy is {len(raw)} bytes, over the 20 KiB a policy "
                         "may have: shorten it")
    return raw


# -- timing --------------------------------------------------------------------------------


@dataclass
class Timing:
    """One in-process measurement: many calls of one function, each timed."""

    case: str
    label: str
    #: what every call returned (checked against what the case expects)
    answer: str
    iterations: int = 0
    seconds: float = 0.0
    median_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    error: str | None = None


def _show(value: object) -> str:
    return "no match (None)" if value is None else str(value)


def time_calls(case: str, label: str, call: Callable[[], object], expected: object,
               count: int, limit: float) -> Timing:
    """Call `call` up to `count` times (or until `limit` seconds), timing each call; its
    answer must be `expected` before and after the timed loop."""
    timing = Timing(case, label, _show(expected))
    for _ in range(min(count // 10, 1000) or 1):  # warm up: caches, branch predictors
        got = call()
    if got != expected:
        timing.error = f"returned {_show(got)}, expected {_show(expected)}"
        return timing
    samples: list[int] = []
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        deadline = start + int(limit * 1e9)
        for _ in range(count):
            t0 = clock()
            call()
            t1 = clock()
            samples.append(t1 - t0)
            if t1 >= deadline:
                break
        end = clock()
    finally:
        if enabled:
            gc.enable()
    got = call()
    if got != expected:
        timing.error = f"returned {_show(got)} after the loop, expected {_show(expected)}"
    micro = sorted(s / 1000 for s in samples)
    timing.iterations = len(micro)
    timing.seconds = (end - start) / 1e9
    timing.median_us = statistics.median(micro)
    timing.p99_us = percentile(micro, 0.99)
    timing.mean_us = statistics.fmean(micro)
    timing.min_us, timing.max_us = micro[0], micro[-1]
    return timing


# -- the run -------------------------------------------------------------------------------


@dataclass
class Cost:
    """Sub-account minus owner's root, for one client count."""

    clients: int
    #: the sub-account's ops/s relative to the owner's, in percent (negative = slower)
    ops_pct: float | None
    #: wall time per request (clients / ops/s) and p50 latency, sub-account - owner: the
    #: policy's cost per request with one client (with 16 it is mostly queueing)
    latency_us: float | None
    p50_us: float | None
    #: the server's CPU per request, sub-account - owner (10 ms ticks over the whole case)
    server_cpu_us: float | None


@dataclass
class PolicyRun:
    coffer: str = ""
    document_bytes: int = 0
    decisions: list[Timing] = field(default_factory=list)
    #: the HTTP rows, as the other cases' (owner, sub-account for each client count)
    http: list[Result] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return (self.error is not None or any(t.error for t in self.decisions)
                or any(r.error for r in self.http))

    def public(self) -> dict[str, Any]:
        """The `policy` section of the JSON."""
        return {"statements": STATEMENTS, "document_bytes": self.document_bytes,
                "coffer": self.coffer, "error": self.error,
                "decisions": [asdict(t) for t in self.decisions],
                "http": [r.public() for r in self.http],
                "costs": [asdict(c) for c in self.costs]}


class PolicyBench:
    """Sets up a coffer with the 100-statement policy, a sub-account it grants, and 4 KiB
    objects; then runs the selected policy cases."""

    def __init__(self, server: BenchServer, progress: Progress, *, mode: Mode,
                 quick: bool) -> None:
        assert server.account is not None
        self.server = server
        self.progress = progress
        self.mode = mode
        self.quick = quick
        self.owner: Account = server.account
        # Short: the policy names it 100 times within the 20 KiB a policy may have (and the
        # bench's server is new each run, so the name is free).
        self.coffer = f"po-{self.owner.app_id}"
        self.sub: Account | None = None

    def say(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}")

    def _sdk(self, who: Account) -> Client:
        return Client(self.server.base_url, who.secret_id, who.secret_key,
                      retry=RetryPolicy(attempts=1))

    def setup(self) -> bytes:
        """The sub-account, the coffer, its objects and its policy; returns the document as
        sent. Checks that the sub-account is refused before the policy and served after."""
        doc = self.server._admin("subaccount", "create", "--parent-uin", self.owner.uin,
                                 "--uin", str(TEAM_UIN + STATEMENTS - 1))
        self.sub = Account(self.owner.app_id, doc["Uin"], doc["SecretId"], doc["SecretKey"])
        raw = encode(document(self.owner.uin, self.owner.app_id, self.coffer,
                              self.principal(self.sub)))
        key = self.key(0)
        with self._sdk(self.owner) as owner, self._sdk(self.sub) as sub:
            owner.create_coffer(self.coffer, [REGION])
            for i in range(OBJECTS):
                owner.put_object(self.coffer, self.key(i), BUFFER[:SIZE])
            try:
                sub.get_object(self.coffer, key).close()
                raise BenchError("the sub-account read an object before any policy was set")
            except errors.PolicyCheckFailed:
                pass
            owner.put_coffer_policy(self.coffer, raw)
            stored = owner.get_coffer_policy(self.coffer)["Statement"]
            if len(stored) != STATEMENTS:
                raise BenchError(f"GetCofferPolicy shows {len(stored)} statements, not "
                                 f"{STATEMENTS}")
            with sub.get_object(self.coffer, key) as reader:
                if reader.read() != BUFFER[:SIZE]:
                    raise BenchError(f"GET {key} as the sub-account: wrong bytes")
        return raw

    def principal(self, who: Account) -> str:
        return language.principal_of(self.owner.uin, who.uin)

    def key(self, i: int) -> str:
        """The objects are where the last statement grants the sub-account GetObject."""
        return f"{prefix(STATEMENTS - 1)}/obj-{i:04d}"

    def run(self, names: list[str]) -> PolicyRun:
        out = PolicyRun(coffer=self.coffer)
        try:
            raw = self.setup()
            out.document_bytes = len(raw)
            self.say(f"policy of {STATEMENTS} statements ({len(raw):,} bytes) on "
                     f"{self.coffer}; sub-account {self.sub.uin if self.sub else '?'}")
            inst = Installation.open(config.load(data_dir=self.server.data_dir), create=False)
            try:
                self._in_process(names, raw, inst, out)
            finally:
                inst.close()
            for clients in (1, 16):
                if f"policy-get-4kib-c{clients}" in names:
                    self._http(clients, out)
        except Exception as exc:  # the case failed; the run goes on to its report
            out.error = f"{type(exc).__name__}: {exc}"
            self.progress.console.print(f"[red]policy cases: FAILED: {out.error}")
        return out

    def _in_process(self, names: list[str], raw: bytes, inst: Installation,
                    out: PolicyRun) -> None:
        assert self.sub is not None
        counts = QUICK if self.quick else FULL
        app_id, coffer = self.owner.app_id, self.coffer
        scope = language.Scope(coffer=coffer, app_id=app_id, regions=inst.settings.regions)
        parsed = language.parse(raw, scope)
        worst = language.parse(encode(document(self.owner.uin, app_id, coffer, "",
                                               everyone=self.principal(self.sub))), scope)
        context = Context(ip=client_address(CLIENT_IP), now=int(time.time()))

        def request(who: str, key: str) -> language.Request:
            return language.Request(principal=who, action="GetObject", region=REGION,
                                    app_id=app_id, path=f"{coffer}/{key}", context=context)

        sub = self.principal(self.sub)
        denied = language.principal_of(self.owner.uin, str(TEAM_UIN + 1))
        last = request(sub, self.key(1))
        none = request(sub, f"{prefix(98)}/elsewhere.bin")
        early = request(denied, f"{prefix(1)}/{DENIES[1][:-1]}x.bin")
        unlisted = request(sub, "nowhere/x.bin")
        plan: list[tuple[str, str, str, Callable[[], object], object]] = [
            ("policy-parse", "parse", f"parse: {STATEMENTS} statements, {len(raw):,} bytes",
             lambda: len(language.parse(raw, scope).statements), STATEMENTS),
            ("policy-decide-last", "decide", "decide: the last statement allows",
             lambda: parsed.decide(last), language.ALLOW),
            ("policy-decide-none", "decide", "decide: none matches (sub-account, a key "
             "outside its grant)", lambda: parsed.decide(none), None),
            ("policy-decide-none", "decide", "decide: none matches, all 100 statements name "
             "the requester (worst case)", lambda: worst.decide(unlisted), None),
            ("policy-decide-deny", "decide", "decide: statement 2 denies",
             lambda: parsed.decide(early), language.DENY),
        ]
        if "policy-access" in names:
            plan += self._access_plan(inst)
        for case, kind, label, call, expected in plan:
            if case not in names:
                continue
            count, limit = counts[kind]
            with self.progress.console.status(f"{case}: {label}"):
                timing = time_calls(case, label, call, expected, count, limit)
            out.decisions.append(timing)
            self.progress.console.print(summary(timing))

    def _access_plan(self, inst: Installation
                     ) -> list[tuple[str, str, str, Callable[[], object], object]]:
        """access.allowed for GetObject of an object of the coffer, as a request from
        127.0.0.1 now, by the sub-account and by the owner's root; and what a request pays
        in all: the coffer's look-up (its policy joined) and the decision."""
        assert self.sub is not None
        found = inst.coffers.get(self.coffer)
        sub, owner = inst.identities.get(self.sub.uin), inst.identities.get(self.owner.uin)
        if found is None or sub is None or owner is None:
            raise BenchError("the coffer or an identity is missing from the installation")
        coffer = found
        context = Context(ip=client_address("127.0.0.1"), now=int(time.time()))
        key, region, name = self.key(2), coffer.primary, self.coffer

        def looked_up() -> bool:
            again = inst.coffers.get(name)
            assert again is not None
            return access.allowed(sub, "GetObject", again, key, region, context)

        return [
            ("policy-access", "access", "coffer look-up (policy joined) + access.allowed: "
             "sub-account", looked_up, True),
            ("policy-access", "access", "access.allowed: sub-account (coffer in hand)",
             lambda: access.allowed(sub, "GetObject", coffer, key, region, context), True),
            ("policy-access", "access", "access.allowed: owner's root (no policy consulted)",
             lambda: access.allowed(owner, "GetObject", coffer, key, region, context), True),
        ]

    def _http(self, clients: int, out: PolicyRun) -> None:
        """GET 4 KiB with `clients` clients as the owner's root, then as the sub-account."""
        assert self.sub is not None
        count, limit = (HTTP_QUICK if self.quick else HTTP_FULL)[clients]
        rows: dict[str, Result] = {}
        for identity, who in (("owner", self.owner), ("sub-account", self.sub)):
            runner = Runner(self.server, self.progress, mode=self.mode)
            runner.signer = Signer(self.server.host_header, who)
            runner.coffers = {0: self.coffer}
            base = f"policy-get-4kib-c{clients}-{'sub' if who is self.sub else 'owner'}"
            case = Case(base, "get", SIZE, count, clients, limit, store="policy")
            runner.stored[case.objects] = [self.key(i) for i in range(OBJECTS)]
            result = runner.run(case)
            result.label = f"GET 4 KiB x{clients}"
            result.note = identity if identity == "owner" else (
                f"sub-account (statement {STATEMENTS} grants it)")
            rows[identity] = result
            out.http.append(result)
            self.progress.console.print(report.summary(result))
        out.costs.append(_cost(clients, rows["owner"], rows["sub-account"]))


def _cost(clients: int, owner: Result, sub: Result) -> Cost:
    def per_request(r: Result) -> float | None:
        return r.clients / r.ops_s * 1e6 if r.ops_s and r.error is None else None

    def cpu(r: Result) -> float | None:
        return (r.server_cpu_s / r.ops * 1e6 if r.server_cpu_s is not None and r.ops
                and r.error is None else None)

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    def p50(r: Result) -> float | None:
        return r.p50_ms * 1000 if r.p50_ms is not None and r.error is None else None

    base, rate = per_request(owner), per_request(sub)
    pct = 100 * (base / rate - 1) if base and rate else None
    return Cost(clients, pct, diff(rate, base), diff(p50(sub), p50(owner)),
                diff(cpu(sub), cpu(owner)))


# -- output --------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.0f} µs"


def summary(t: Timing) -> str:
    if t.error is not None:
        return f"[red]{t.case}: {t.label}: FAILED: {t.error}"
    return (f"{t.case}: {t.label}: {t.iterations:,} calls in {t.seconds:.2f} s, median "
            f"{_num(t.median_us, 2)} µs, p99 {_num(t.p99_us, 2)} µs")


def _decision_row(t: Timing) -> tuple[str, ...]:
    answer = f"FAILED: {t.error}" if t.error else t.answer
    return (t.case, t.label, answer, f"{t.iterations:,}", _num(t.seconds, 2),
            _num(t.median_us, 2), _num(t.p99_us, 2), _num(t.mean_us, 2))


def _http_row(r: Result) -> tuple[str, ...]:
    cpu = r.server_cpu_s / r.ops * 1e6 if r.server_cpu_s is not None and r.ops else None
    note = f"FAILED: {r.error}" if r.error else (
        f"stopped by {r.stopped_by}" if r.stopped_by in ("time limit", "interrupted") else "")
    return (r.name, r.note or "-", f"{r.ops}/{r.planned}", _num(r.seconds, 2),
            _num(r.ops_s, 0), _num(r.p50_ms, 2), _num(r.p99_ms, 2), _num(r.server_cpu, 2),
            _num(cpu, 0), note)


def cost_lines(run: PolicyRun) -> list[str]:
    return [f"x{c.clients}, sub-account vs owner: ops/s {_pct(c.ops_pct)}; per request "
            f"{_signed(c.latency_us)} of wall time (p50 {_signed(c.p50_us)}), "
            f"{_signed(c.server_cpu_us)} of server CPU" for c in run.costs]


def console_tables(console: Console, run: PolicyRun) -> None:
    if run.decisions:
        table = Table(title=TITLE, title_justify="left", caption=NOTE, caption_justify="left")
        for name in DECISION_HEADERS:
            table.add_column(name, justify="left" if name in DECISION_HEADERS[:3] else "right")
        for t in run.decisions:
            table.add_row(*_decision_row(t))
        console.print(table)
    if run.http:
        table = Table(title=HTTP_TITLE, title_justify="left",
                      caption="\n".join(cost_lines(run)), caption_justify="left")
        for name in HTTP_HEADERS:
            table.add_column(name, justify="left" if name in ("Case", "Identity", "Note")
                             else "right")
        for r in run.http:
            table.add_row(*_http_row(r))
        console.print(table)
    if run.error:
        console.print(f"[red]policy cases: FAILED: {run.error}")


def markdown(run: PolicyRun) -> str:
    def line(cells: tuple[str, ...] | list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out: list[str] = []
    if run.decisions:
        out += [f"{TITLE}:", "", line(DECISION_HEADERS),
                line(["---"] * 3 + ["---:"] * (len(DECISION_HEADERS) - 3))]
        out += [line(_decision_row(t)) for t in run.decisions]
        out += ["", NOTE, ""]
    if run.http:
        out += [f"{HTTP_TITLE}:", "", line(HTTP_HEADERS),
                line(["---"] * 2 + ["---:"] * (len(HTTP_HEADERS) - 3) + ["---"])]
        out += [line(_http_row(r)) for r in run.http]
        out += ["", *cost_lines(run), ""]
    if run.error:
        out += [f"Policy cases FAILED: {run.error}", ""]
    return "\n".join(out)
