"""`vws bench fft` without a stack: its arguments, the order of the runs, the table, the JSON
and the chart, over fake runners (the real run is tests/e2e/test_fft_cli.py)."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from vws.cli import fftbench
from vws.cli.connection import CliError
from vws.cli.main import main
from vws.v1 import factory_pb2, workspace_pb2


def settings(kinds=("native", "account", "vm"), sizes=(6, 8), repeat=3, harness="/bin/true"):
    return fftbench.Settings(kinds=tuple(kinds), sizes=tuple(sizes), repeat=repeat, min_time=0.01, cpu_millis=1000,
                             memory_bytes=1 << 30, image="busybox", harness=pathlib.Path(harness),
                             run_timeout=60.0)


def result(n, mflops, spread=0.01):
    return {"n": 1 << n, "log2n": n, "iterations": 4, "seconds_per_transform": 1e-6, "mflops": mflops,
            "spread": spread, "max_rel_error": 1e-16, "runs": [1.0, 1.01], "implementation": "static"}


class FakeRunner:
    def __init__(self, kind, log, mflops=None, unavailable=None, failing=(), interrupt_at=None):
        self.kind, self.log, self.mflops = kind, log, mflops or {}
        self.unavailable, self.failing, self.interrupt_at = unavailable, set(failing), interrupt_at
        self.where = f"fake {kind}"
        self.runs = 0

    def prepare(self):
        self.log.append(("prepare", self.kind))
        if self.unavailable:
            raise fftbench.KindUnavailable(self.unavailable)

    def run(self, n):
        self.log.append(("run", self.kind, n))
        self.runs += 1
        if self.interrupt_at == n:
            raise KeyboardInterrupt
        if n in self.failing:
            raise fftbench.RunFailed(f"size {n} broke")
        value = self.mflops.get(n, 1000.0)
        return result(n, value.pop(0) if isinstance(value, list) else value)

    def close(self):
        self.log.append(("close", self.kind))


def test_each_kind_runs_alone_each_size_right_after_its_native_pair():
    log, steps = [], []
    runners = [FakeRunner("native", log, {6: [1000.0, 1100.0], 8: [2000.0, 2000.0]}),
               FakeRunner("account", log, {6: 990.0, 8: 1800.0}),
               FakeRunner("vm", log, {6: 11.0, 8: 20.0})]
    report = fftbench.run(settings(), runners, lambda label, done, total: steps.append((label, done, total)))
    assert log == [("prepare", "native"),
                   ("prepare", "account"), ("run", "native", 6), ("run", "account", 6),
                   ("run", "native", 8), ("run", "account", 8), ("close", "account"),
                   ("prepare", "vm"), ("run", "native", 6), ("run", "vm", 6),
                   ("run", "native", 8), ("run", "vm", 8), ("close", "vm")]
    # degradation against the pair made just before; native shows its best run
    assert report.degradation("account", 6) == pytest.approx(1.0)
    assert report.degradation("vm", 6) == pytest.approx(99.0)
    assert report.degradation("account", 8) == pytest.approx(10.0)
    assert report.results[("native", 6)]["mflops"] == 1100.0
    assert report.degradation("native", 6) is None
    # the bar counts every step and ends where it said it would
    assert {t for _, _, t in steps} == {10}
    dones = [d for _, d, _ in steps]
    assert dones == sorted(dones)
    assert ("vm 2^8", 9, 10) in steps


def test_a_kind_that_cannot_run_says_why_in_its_row_and_the_others_go_on():
    log = []
    runners = [FakeRunner("native", log), FakeRunner("account", log, unavailable="useradd is missing"),
               FakeRunner("vm", log, {6: 10.0, 8: 10.0}, failing=[8])]
    report = fftbench.run(settings(), runners, lambda *a: None)
    assert report.unavailable == {"account": "useradd is missing"}
    assert ("close", "account") in log and ("run", "account", 6) not in log
    assert report.failures == {("vm", 8): "size 8 broke"}
    table = report.table()
    lines = table.splitlines()
    assert any(line.split()[:2] == ["all", "account"] and "did not run: useradd is missing" in line for line in lines)
    assert any("vm" in line and "size 8 broke" in line for line in lines)
    doc = report.as_dict()
    assert {"kind": "account", "ran": False, "where": "", "reason": "useradd is missing"} in doc["kinds"]
    assert {"kind": "vm", "log2n": 8, "n": 256, "error": "size 8 broke"} in doc["results"]
    assert doc["summary"]["vm"]["failed_sizes"] == 1


def test_every_workspace_is_destroyed_even_when_interrupted():
    log = []
    runners = [FakeRunner("native", log), FakeRunner("account", log, interrupt_at=8), FakeRunner("vm", log)]
    with pytest.raises(KeyboardInterrupt):
        fftbench.run(settings(), runners, lambda *a: None)
    assert ("close", "account") in log


def test_only_native_runs_each_size_once():
    log = []
    report = fftbench.run(settings(kinds=("native",)), [FakeRunner("native", log)], lambda *a: None)
    assert [e for e in log if e[0] == "run"] == [("run", "native", 6), ("run", "native", 8)]
    assert "native" in report.table() and report.summary()["native"]["sizes"] == 2


def test_table_and_json_carry_the_figures():
    log = []
    runners = [FakeRunner("native", log, {6: 2000.0, 8: 1000.0}),
               FakeRunner("account", log, {6: 1960.0, 8: 1010.0})]
    report = fftbench.run(settings(kinds=("native", "account")), runners, lambda *a: None)
    table = report.table()
    assert table.splitlines()[0].split() == ["SIZE", "KIND", "MFLOPS", "DEGRADATION", "SPREAD", "NOTE"]
    assert "2^6" in table and "2,000.0" in table and "+2.0%" in table and "-1.0%" in table
    assert "account: worst degradation +2.0% at 2^6 (mean +0.5%), worst spread 1.0% at 2^6" in table
    doc = json.loads(json.dumps(report.as_dict()))  # plain JSON all the way down
    rows = {(r["kind"], r["log2n"]): r for r in doc["results"]}
    assert rows[("account", 6)]["degradation_percent"] == pytest.approx(2.0)
    assert rows[("account", 6)]["native_mflops"] == 2000.0
    assert rows[("native", 8)]["degradation_percent"] is None
    assert rows[("native", 8)]["spread_percent"] == pytest.approx(1.0)
    assert doc["settings"]["sizes"] == [6, 8] and doc["settings"]["repeat"] == 3
    assert doc["summary"]["account"]["max_degradation_percent"] == pytest.approx(2.0)


def test_plot_draws_a_png(tmp_path):
    log = []
    runners = [FakeRunner("native", log), FakeRunner("account", log, {6: 900.0, 8: 950.0}),
               FakeRunner("vm", log, unavailable="no vm here")]
    report = fftbench.run(settings(), runners, lambda *a: None)
    path = tmp_path / "fft.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.parametrize("text, sizes", [("6-8", (6, 7, 8)), ("16,10,16", (10, 16)), ("22", (22,))])
def test_sizes(text, sizes):
    assert fftbench.parse_sizes(text) == sizes


@pytest.mark.parametrize("text", ["5-8", "8-6", "23", "a", "", "6,,8", "64"])
def test_bad_sizes_name_the_flag_and_the_range(text):
    with pytest.raises(CliError, match=r"--sizes .*6\.\.22") as e:
        fftbench.parse_sizes(text)
    assert e.value.code == 2


def test_kinds():
    assert fftbench.parse_kinds("native,account,native") == ("native", "account")
    with pytest.raises(CliError, match="--on 'native,xen': name kinds from native, account, sandbox, vm"):
        fftbench.parse_kinds("native,xen")


def test_parse_result_takes_the_line_for_the_size():
    good = json.dumps(result(10, 123.0))
    assert fftbench.parse_result(f"noise\n{good}\n", 10)["mflops"] == 123.0
    with pytest.raises(fftbench.RunFailed, match="no result for 2\\^12: noise"):
        fftbench.parse_result(f"noise\n{good}", 12)


def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path):
    assert main(["bench", "fft", "--sizes", "3-5", "--harness", "/bin/true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sizes '3-5'" in err
    assert main(["bench", "fft", "--on", "native", "--harness", str(tmp_path / "none")]) == 2
    assert "no FFT harness at" in capsys.readouterr().err
    assert main(["bench", "fft", "--on", "native", "--repeat", "0", "--harness", "/bin/true"]) == 2
    assert "--repeat 0" in capsys.readouterr().err
    assert main(["bench", "fft", "--on", "native", "--plot", "x.svg", "--harness", "/bin/true"]) == 2
    assert "--plot x.svg: name a .png file" in capsys.readouterr().err


def test_a_kind_that_boots_an_image_runs_the_harness_its_image_carries(tmp_path):
    harness = tmp_path / "vws-fft"
    harness.write_bytes(b"#!/bin/true\n")
    s = dataclasses.replace(settings(), harness=harness)
    site = factory_pb2.GetSiteInfoResponse()
    vm = fftbench.WorkspaceRunner("vm", None, s, site)
    assert vm.spec().kind == workspace_pb2.WorkspaceSpec.KIND_VIRTUAL_MACHINE
    assert vm.spec().software.image == "busybox" and not vm.spec().software.files
    assert vm.argv(10)[0] == "vws-fft"
    account = fftbench.WorkspaceRunner("account", None, s, site)
    assert account.spec().kind == workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT
    assert not account.spec().software.image and account.spec().software.files[0].path == "vws-fft"
    assert account.argv(10)[0] == "./vws-fft"
    assert fftbench.ALL_KINDS == ("native", "account", "sandbox", "vm")
