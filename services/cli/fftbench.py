"""`vws bench fft`: what each kind of workspace costs in performance against native (issue 7).

The same static harness, vws-fft (native/fft_main.c: the C kernel of vws.native.fft timed the
way benchFFT times it), runs natively on this host and inside one workspace of each kind asked
for, all given the same CPU and memory. Account and sandbox workspaces get the harness staged
into their home; a virtual machine runs the copy its image carries (/usr/bin/vws-fft in the
test guest). The report gives MFLOPS per size per kind, the degradation against native in %
and the spread across repeats, as a table, as JSON (-o json) and as a chart (--plot).

One workspace lives at a time; each of its runs comes right after a native run of the same
size, and its degradation is taken against that pair, so a slow drift of the machine falls on
both sides alike. A kind that cannot run says why in its row and the others go on; every
workspace made for the run is destroyed at the end, Ctrl-C included."""
from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import uuid
from typing import Callable, Protocol

import grpc

from . import commands
from . import output as out
from .connection import TIMEOUT, CliError, Connection, describe_rpc_error, wait_for, wire_kind
from ..common import errors, kinds, units
from ..v1 import factory_pb2, manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
NATIVE = "native"
ALL_KINDS = (NATIVE, *kinds.names())
MIN_LOG2, MAX_LOG2 = 6, 22
HARNESS = "vws-fft"
# Where the harness lands in an account or sandbox workspace (relative to its home).
STAGED = "vws-fft"
LABEL = {"purpose": "bench-fft"}
# Long enough for a whole run; a run killed without its clean-up leaves nothing for longer.
LIFETIME = dt.timedelta(hours=2)


class KindUnavailable(Exception):
    """This kind cannot run here; the message says why (it goes into the kind's row)."""


class RunFailed(Exception):
    """One size could not be measured in one kind; the message says why."""


@dataclasses.dataclass(frozen=True)
class Settings:
    kinds: tuple[str, ...]
    sizes: tuple[int, ...]  # log2 N
    repeat: int
    min_time: float
    cpu_millis: int
    memory_bytes: int
    image: str
    harness: pathlib.Path
    run_timeout: float

    def harness_args(self, log2n: int) -> list[str]:
        return ["--sizes", str(log2n), "--min-time", repr(self.min_time), "--repeat", str(self.repeat)]

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(kinds=list(self.kinds), sizes=list(self.sizes), harness=str(self.harness))
        return d


# --------------------------------------------------------------------------- arguments
def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise CliError(f"--on {text!r}: name kinds from {', '.join(ALL_KINDS)}, comma-separated "
                       "(e.g. --on native,account)", 2)
    return tuple(dict.fromkeys(kinds))


def parse_sizes(text: str) -> tuple[int, ...]:
    """`6-22` or `6,8,16` (log2 N, like vws-fft's --sizes) as a sorted tuple."""
    allowed = (f"--sizes {text!r}: give log2 of the sizes, {MIN_LOG2}..{MAX_LOG2}, as a range A-B "
               "or a list A,B,C (e.g. --sizes 6-22 or --sizes 10,16)")
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-", 1))
            sizes = list(range(a, b + 1)) if a <= b else []
        else:
            sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise CliError(allowed, 2) from None
    if not sizes or any(not MIN_LOG2 <= s <= MAX_LOG2 for s in sizes):
        raise CliError(allowed, 2)
    return tuple(sorted(set(sizes)))


def find_harness(explicit: str | None) -> pathlib.Path:
    """--harness, $VWS_FFT, vws-fft on PATH, then the build in this source tree (make setup)."""
    if explicit:
        candidates = [(pathlib.Path(explicit), "--harness")]
    else:
        candidates = [(pathlib.Path(os.environ["VWS_FFT"]), "VWS_FFT")] if os.environ.get("VWS_FFT") else []
        on_path = shutil.which(HARNESS)
        if on_path:
            candidates.append((pathlib.Path(on_path), "PATH"))
        candidates.append((pathlib.Path(__file__).resolve().parents[2] / ".build" / HARNESS, "the source tree"))
    for path, _ in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    path, source = candidates[0]
    raise CliError(f"no FFT harness at {path} (from {source}): build it with `make setup` "
                   "(scripts/build-fft.sh) or name it with --harness", 2)


# --------------------------------------------------------------------------- one kind
def parse_result(stdout: str, log2n: int) -> dict:
    """The harness's JSON line for size 2^log2n, or RunFailed saying what came instead."""
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if result.get("log2n") == log2n and isinstance(result.get("mflops"), (int, float)):
            return result
    raise RunFailed(f"the harness printed no result for 2^{log2n}: {stdout.strip()[:200] or 'nothing'}")


def failure(code: int, stderr: str) -> RunFailed:
    last = (stderr.strip().splitlines() or ["no message"])[-1]
    return RunFailed(f"the harness exited {code}: {last[:200]}")


class Runner(Protocol):
    kind: str
    where: str  # what ran it: the host, or the workspace and its manager

    def prepare(self) -> None: ...  # raises KindUnavailable

    def run(self, log2n: int) -> dict: ...  # raises RunFailed

    def close(self) -> None: ...


class NativeRunner:
    """The harness as a plain process on this host."""
    kind = NATIVE

    def __init__(self, settings: Settings):
        self.settings = settings
        self.where = f"host {socket.gethostname()}"

    def prepare(self) -> None:
        if not os.access(self.settings.harness, os.X_OK):
            raise KindUnavailable(f"{self.settings.harness} is not executable")

    def run(self, log2n: int) -> dict:
        try:
            r = subprocess.run([str(self.settings.harness), *self.settings.harness_args(log2n)], capture_output=True,
                               text=True, timeout=self.settings.run_timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"no result within {self.settings.run_timeout:g}s (--run-timeout)") from None
        except OSError as exc:
            raise RunFailed(f"cannot run {self.settings.harness}: {exc.strerror}") from None
        if r.returncode != 0:
            raise failure(r.returncode, r.stderr)
        return parse_result(r.stdout, log2n)

    def close(self) -> None:
        pass


class WorkspaceRunner:
    """The harness inside a workspace of one kind, made for the run and destroyed after it."""

    def __init__(self, kind: str, conn: Connection, settings: Settings, site: factory_pb2.GetSiteInfoResponse):
        self.kind, self.conn, self.settings, self.site = kind, conn, settings, site
        self.traits = kinds.by_name(kind)
        self.name = ""
        self.where = ""
        self.stub = None

    def spec(self) -> workspace_pb2.WorkspaceSpec:
        s = self.settings
        spec = workspace_pb2.WorkspaceSpec(kind=wire_kind(self.kind), start_on_create=True)
        spec.resources.cpu_millis = s.cpu_millis
        spec.resources.memory_bytes = s.memory_bytes
        max_lifetime = self.site.max_lifetime.ToTimedelta() if self.site.HasField("max_lifetime") else LIFETIME
        spec.lifetime.FromTimedelta(min(LIFETIME, max_lifetime) if max_lifetime.total_seconds() > 0 else LIFETIME)
        if self.traits.boots_image:  # the test guest's image carries the harness on its PATH
            spec.software.image = s.image
        if self.traits.accepts_setup:
            spec.software.files.add(path=STAGED, content=s.harness.read_bytes(), mode=0o755)
        return spec

    def argv(self, log2n: int) -> list[str]:
        return [f"./{STAGED}" if self.traits.accepts_setup else HARNESS, *self.settings.harness_args(log2n)]

    def prepare(self) -> None:
        offer = next((k for k in self.site.kinds if k.kind == wire_kind(self.kind)), None)
        if offer is None or not offer.available:
            raise KindUnavailable(f"this site offers no {self.kind} workspaces"
                                  + (f": {offer.reason}" if offer is not None and offer.reason else ""))
        ws = W(spec=self.spec(), labels=LABEL, owner=getpass.getuser())
        try:
            r = self.conn.factory().CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
                request_id=str(uuid.uuid4()), workspace=ws), timeout=TIMEOUT * 4)
            self.name = r.workspace.name
            running = wait_for(self.conn, self.name, {W.STATE_RUNNING}, self.settings.run_timeout)
            self.stub, address = self.conn.manager_of(running)
        except grpc.RpcError as exc:
            raise KindUnavailable(f"could not make the workspace: {describe_rpc_error(exc)}") from None
        except CliError as exc:
            raise KindUnavailable(f"could not make the workspace: {exc}") from None
        self.where = f"{self.name} on {running.endpoint.manager} ({running.endpoint.host_identity or address})"

    def run(self, log2n: int) -> dict:
        first = manager_pb2.ExecRequest(name=self.name, argv=self.argv(log2n), close_stdin=True)
        stdout, stderr, code = bytearray(), bytearray(), None
        try:
            for msg in self.stub.Exec(iter([first]), timeout=self.settings.run_timeout):
                which = msg.WhichOneof("output")
                if which == "stdout":
                    stdout += msg.stdout
                elif which == "stderr":
                    stderr += msg.stderr
                elif which == "exit_status":
                    code = msg.exit_status.code
        except grpc.RpcError as exc:
            if isinstance(errors.from_rpc_error(exc), errors.DeadlineExceeded):
                raise RunFailed(f"no result within {self.settings.run_timeout:g}s (--run-timeout)") from None
            raise RunFailed(describe_rpc_error(exc)) from None
        text = stdout.decode(errors="replace")
        if code != 0:
            raise failure(-1 if code is None else code, stderr.decode(errors="replace"))
        return parse_result(text, log2n)

    def close(self) -> None:
        if not self.name:
            return
        try:
            ws = self.conn.repository().DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=self.name),
                                                        timeout=TIMEOUT).workspace
            if ws.state != W.STATE_TERMINATED:
                wait_for(self.conn, self.name, {W.STATE_TERMINATED}, TIMEOUT * 4)
        except (grpc.RpcError, CliError) as exc:
            detail = describe_rpc_error(exc) if isinstance(exc, grpc.RpcError) else str(exc)
            print(f"vws: could not destroy {self.name} ({detail}); `vws destroy {self.name}` removes it",
                  file=sys.stderr)


# --------------------------------------------------------------------------- the report
@dataclasses.dataclass
class Report:
    settings: Settings
    where: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> what ran it
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> why it did not run
    results: dict[tuple[str, int], dict] = dataclasses.field(default_factory=dict)  # (kind, log2n) -> result
    failures: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)  # (kind, log2n) -> why
    # (kind, log2n) -> the native run made just before that kind's run (its pair)
    pairs: dict[tuple[str, int], dict] = dataclasses.field(default_factory=dict)

    def degradation(self, kind: str, log2n: int) -> float | None:
        """How much slower than native, in % (negative: faster), against the kind's paired native
        run (else the best native run), or None without both figures."""
        base = self.pairs.get((kind, log2n)) or self.results.get((NATIVE, log2n))
        this = self.results.get((kind, log2n))
        if kind == NATIVE or not base or not this or not base["mflops"]:
            return None
        return 100.0 * (base["mflops"] - this["mflops"]) / base["mflops"]

    def summary(self) -> dict[str, dict]:
        """Per kind that ran: the worst degradation and the worst spread over its sizes, in %."""
        summary = {}
        for kind in self.settings.kinds:
            sizes = [n for n in self.settings.sizes if (kind, n) in self.results]
            if not sizes:
                continue
            degradations = [(d, n) for n in sizes if (d := self.degradation(kind, n)) is not None]
            worst_spread = max(sizes, key=lambda n: self.results[(kind, n)]["spread"])
            entry = {"sizes": len(sizes), "failed_sizes": sum((kind, n) in self.failures for n in self.settings.sizes),
                     "max_spread_percent": 100.0 * self.results[(kind, worst_spread)]["spread"],
                     "max_spread_log2n": worst_spread}
            if degradations:
                worst, at = max(degradations)
                entry.update(max_degradation_percent=worst, max_degradation_log2n=at,
                             mean_degradation_percent=sum(d for d, _ in degradations) / len(degradations))
            summary[kind] = entry
        return summary

    def as_dict(self) -> dict:
        rows = []
        for n in self.settings.sizes:
            for kind in self.settings.kinds:
                if (kind, n) in self.results:
                    r = self.results[(kind, n)]
                    rows.append({"kind": kind, "log2n": n, "n": 1 << n, "mflops": r["mflops"],
                                 "degradation_percent": self.degradation(kind, n),
                                 "native_mflops": (self.pairs.get((kind, n)) or {}).get("mflops"),
                                 "spread_percent": 100.0 * r["spread"], "iterations": r["iterations"],
                                 "seconds_per_transform": r["seconds_per_transform"], "runs": r["runs"],
                                 "max_rel_error": r["max_rel_error"]})
                elif (kind, n) in self.failures:
                    rows.append({"kind": kind, "log2n": n, "n": 1 << n, "error": self.failures[(kind, n)]})
        kinds = [{"kind": k, "ran": k not in self.unavailable, "where": self.where.get(k, ""),
                  "reason": self.unavailable.get(k, "")} for k in self.settings.kinds]
        return {"settings": self.settings.as_dict(), "kinds": kinds, "results": rows, "summary": self.summary()}

    def table(self) -> str:
        rows = []
        for n in self.settings.sizes:
            first = True
            for kind in self.settings.kinds:
                if kind in self.unavailable:
                    continue
                size = f"2^{n}" if first else ""
                first = False
                if (kind, n) in self.results:
                    r = self.results[(kind, n)]
                    d = self.degradation(kind, n)
                    rows.append([size, kind, f"{r['mflops']:,.1f}", "-" if d is None else f"{d:+.1f}%",
                                 f"{100 * r['spread']:.1f}%", ""])
                else:
                    rows.append([size, kind, "-", "-", "-", self.failures.get((kind, n), "not run")])
        for kind in self.settings.kinds:
            if kind in self.unavailable:
                rows.append(["all", kind, "-", "-", "-", f"did not run: {self.unavailable[kind]}"])
        lines = [out.table(rows, ["SIZE", "KIND", "MFLOPS", "DEGRADATION", "SPREAD", "NOTE"])]
        for kind, s in self.summary().items():
            worst = (f"worst degradation {s['max_degradation_percent']:+.1f}% at 2^{s['max_degradation_log2n']} "
                     f"(mean {s['mean_degradation_percent']:+.1f}%), " if "max_degradation_percent" in s else "")
            lines.append(f"{kind}: {worst}worst spread {s['max_spread_percent']:.1f}% at 2^{s['max_spread_log2n']}"
                         f"; {self.where.get(kind, '')}")
        lines.append("DEGRADATION: how much slower than the native run made just before it (negative: faster); "
                     "native shows its best such run.\nSPREAD: (slowest - fastest) / fastest of the "
                     f"{self.settings.repeat} timed repeats. MFLOPS = 5 N log2 N / (time per transform in us).")
        return "\n".join(lines)

    def plot(self, path: pathlib.Path) -> None:
        """MFLOPS per size per kind, and below it the degradation against native, as a PNG."""
        import matplotlib  # here only: it takes a second to load, and only --plot needs it
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=[3, 2])
        for kind in self.settings.kinds:
            color = f"C{ALL_KINDS.index(kind)}"  # a kind keeps its colour in both panels
            sizes = [n for n in self.settings.sizes if (kind, n) in self.results]
            if sizes:
                top.plot(sizes, [self.results[(kind, n)]["mflops"] for n in sizes], marker="o", label=kind,
                         color=color)
            degraded = [(n, d) for n in sizes if (d := self.degradation(kind, n)) is not None]
            if degraded:
                bottom.plot([n for n, _ in degraded], [d for _, d in degraded], marker="o", label=kind, color=color)
        missing = [f"{k}: {why}" for k, why in self.unavailable.items()]
        top.set_title("vws bench fft: complex double-precision FFT, MFLOPS = 5 N log2 N / t(us)"
                      + ("\n" + "; ".join(missing)[:150] if missing else ""), fontsize=10)
        top.set_ylabel("MFLOPS")
        top.set_yscale("log")  # an emulated guest runs two orders of magnitude below the rest
        top.grid(True, alpha=0.3)
        top.legend()
        bottom.axhline(0, color="grey", linewidth=0.8)
        bottom.set_ylabel("degradation vs native (%)")
        bottom.set_xlabel("log2 N")
        bottom.grid(True, alpha=0.3)
        if bottom.lines[1:]:
            bottom.legend()
        bottom.set_xticks(list(self.settings.sizes))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def run(settings: Settings, runners: list[Runner], progress: Callable[[str, int, int], None]) -> Report:
    """Measures every size natively and in every kind, closing every runner at the end.

    One workspace lives at a time (a host's managers need not have room for all of them at
    once): each is made, measured at every size, each size right after a native run of the
    same size (its pair, against which its degradation is taken), then destroyed."""
    report = Report(settings)
    native = next((r for r in runners if r.kind == NATIVE), None)
    kinds = [r for r in runners if r.kind != NATIVE]
    sizes = settings.sizes
    steps = len(sizes) if not kinds else len(kinds) * (1 + len(sizes) * (2 if native else 1))
    done = 0

    def measure(runner: Runner, n: int) -> dict | None:
        nonlocal done
        progress(f"{runner.kind} 2^{n}", done, steps)
        done += 1
        try:
            return runner.run(n)
        except RunFailed as exc:
            report.failures[(runner.kind, n)] = str(exc)
            return None

    def keep_native(n: int, result: dict | None) -> None:
        best = report.results.get((NATIVE, n))
        if result is not None and (best is None or result["mflops"] > best["mflops"]):
            report.results[(NATIVE, n)] = result
            report.failures.pop((NATIVE, n), None)

    if native is not None:
        try:
            native.prepare()
            report.where[NATIVE] = native.where
        except KindUnavailable as exc:
            report.unavailable[NATIVE] = str(exc)
            native = None
    for runner in kinds:
        progress(f"making the {runner.kind} workspace", done, steps)
        done += 1
        try:
            runner.prepare()
            report.where[runner.kind] = runner.where
            for n in sizes:
                if native is not None:
                    pair = measure(native, n)
                    keep_native(n, pair)
                    if pair is not None:
                        report.pairs[(runner.kind, n)] = pair
                result = measure(runner, n)
                if result is not None:
                    report.results[(runner.kind, n)] = result
        except KindUnavailable as exc:
            report.unavailable[runner.kind] = str(exc)
            done += len(sizes) * (2 if native else 1)
        finally:
            progress(f"destroying the {runner.kind} workspace", done, steps)
            runner.close()
    if native is not None and not kinds:
        for n in sizes:
            keep_native(n, measure(native, n))
    return report


# --------------------------------------------------------------------------- the command
def settings_from(args) -> Settings:
    repeat = args.repeat
    if not 1 <= repeat <= 1000:
        raise CliError(f"--repeat {repeat}: give 1..1000 timed runs per size", 2)
    if not 0 < args.min_time <= 3600:
        raise CliError(f"--min-time {args.min_time:g}: give seconds > 0 and <= 3600", 2)
    if not args.run_timeout > 0:
        raise CliError(f"--run-timeout {args.run_timeout:g}: give seconds > 0", 2)
    return Settings(kinds=parse_kinds(args.on), sizes=parse_sizes(args.sizes), repeat=repeat,
                    min_time=args.min_time, cpu_millis=units.parse_cpu(args.cpu, "--cpu"),
                    memory_bytes=units.parse_size(args.memory, "--memory"), image=args.image,
                    harness=find_harness(args.harness), run_timeout=args.run_timeout)


def cmd_bench_fft(args) -> int:
    settings = settings_from(args)
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot}: name a .png file", 2)
    runners: list[Runner] = []
    if any(k != NATIVE for k in settings.kinds):
        conn = Connection(args)
        site = conn.site()
    for kind in settings.kinds:
        runners.append(NativeRunner(settings) if kind == NATIVE else WorkspaceRunner(kind, conn, settings, site))
    bar = out.ProgressBar(sys.stderr)
    try:
        report = run(settings, runners, bar.steps)
    finally:
        bar.show(None)
    if args.plot:
        try:
            report.plot(pathlib.Path(args.plot))
        except OSError as exc:
            raise CliError(f"--plot {args.plot}: {exc.strerror}") from None
    if args.output == "json":
        out.print_json(report.as_dict())
    else:
        print(report.table())
        if args.plot:
            print(f"chart: {args.plot}")
    return 0 if report.results else 1


def add_parsers(command) -> None:
    """`vws bench fft` and its options, under the `bench` command."""
    bench = commands.group(command, "bench", "benchmarks of this site: vws bench fft", "bench_command", "BENCH_COMMAND")
    help = ("run the FFT harness natively and in a workspace of each kind (same CPU and memory), then print "
            "MFLOPS per size, the degradation against native and the spread across repeats")
    b = bench("fft", cmd_bench_fft, help)
    b.description = help + ". The workspaces are destroyed at the end."
    b.add_argument("-o", "--output", choices=["table", "json"], default="table",
                   help="table for people (default), json for programs (the raw figures)")
    b.add_argument("--on", default=",".join(ALL_KINDS), metavar="KINDS",
                   help=f"where to run, comma-separated from {', '.join(ALL_KINDS)} (default: all)")
    b.add_argument("--sizes", default=f"{MIN_LOG2}-{MAX_LOG2}", metavar="LOG2",
                   help=f"log2 of the transform sizes: a range A-B or a list A,B,C "
                        f"(default {MIN_LOG2}-{MAX_LOG2}, i.e. 64 to 4194304 points)")
    b.add_argument("--repeat", type=int, default=5, metavar="N",
                   help="timed runs per size, the fastest kept (default 5)")
    b.add_argument("--min-time", type=float, default=0.2, metavar="SECONDS",
                   help="each timed run lasts at least this long (default 0.2)")
    b.add_argument("--cpu", default="1", help="CPU of each workspace, in cores (1) or millicores (default 1)")
    b.add_argument("--memory", default="1G", help="memory of each workspace (default 1G; 2^22 needs about 400M)")
    b.add_argument("--image", default="busybox",
                   help="the image the vm boots; it must carry vws-fft on its PATH (default busybox, the test guest)")
    b.add_argument("--harness", metavar="FILE",
                   help="the static vws-fft to run natively and stage into workspaces "
                        "(default: $VWS_FFT, PATH, then .build/vws-fft of the source tree)")
    b.add_argument("--run-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="give up on one size in one kind after this long (default 600)")
    b.add_argument("--plot", metavar="FILE.png", help="also draw the figures into this PNG")


__all__ = ["ALL_KINDS", "KindUnavailable", "NativeRunner", "Report", "RunFailed", "Settings", "WorkspaceRunner",
           "add_parsers", "cmd_bench_fft", "find_harness", "parse_kinds", "parse_result", "parse_sizes", "run"]
