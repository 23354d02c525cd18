"""`vws bench fft` for real: the static harness natively and inside a real account workspace
made by a real stack, at small sizes; the workspace is gone afterwards."""
from __future__ import annotations

import json
import pathlib
import pwd

import pytest

HARNESS = pathlib.Path(__file__).resolve().parents[2] / ".build" / "vws-fft"


@pytest.mark.requires(not HARNESS.is_file(), "the static harness .build/vws-fft (make setup builds it)")
def test_native_and_account_at_small_sizes(cli, tmp_path):
    cli("up", "--repository-listen", "127.0.0.1:0", "--factory-listen", "127.0.0.1:0",
        "--manager-listen", "127.0.0.1:0", check=0)
    chart = tmp_path / "fft.png"
    r = cli("bench", "fft", "--on", "native,account", "--sizes", "6,8", "--repeat", "2", "--min-time", "0.02",
            "--plot", str(chart), "-o", "json", check=0)
    doc = json.loads(r.stdout)
    assert [k["kind"] for k in doc["kinds"]] == ["native", "account"] and all(k["ran"] for k in doc["kinds"])
    rows = {(row["kind"], row["log2n"]): row for row in doc["results"]}
    assert set(rows) == {("native", 6), ("native", 8), ("account", 6), ("account", 8)}
    for (kind, n), row in rows.items():
        assert row["n"] == 1 << n and row["mflops"] > 0 and len(row["runs"]) == 2
        assert row["max_rel_error"] <= 1e-10
        assert (row["degradation_percent"] is None) == (kind == "native")
    assert rows[("account", 6)]["native_mflops"] > 0
    assert doc["kinds"][1]["where"].startswith("workspaces/")
    assert chart.read_bytes()[:4] == b"\x89PNG"

    # the workspace made for the run is gone, with its account
    name = doc["kinds"][1]["where"].split()[0]
    assert json.loads(cli("show", name, "-o", "json", check=0).stdout)["state"] == "STATE_TERMINATED"
    assert not any(p.pw_name.startswith(f"ve{cli.tag}-") for p in pwd.getpwall())

    table = cli("bench", "fft", "--on", "native,account", "--sizes", "7", "--repeat", "1", "--min-time", "0.01",
                check=0).stdout
    lines = table.splitlines()
    assert lines[0].split() == ["SIZE", "KIND", "MFLOPS", "DEGRADATION", "SPREAD", "NOTE"]
    assert lines[1].split()[:2] == ["2^7", "native"] and lines[2].split()[0] == "account"
    assert "account: worst degradation" in table
