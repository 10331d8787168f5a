"""The pure parts of the benchmark harness (bench/): reading wrk's output, percentiles, goal rows.

Only parsing and arithmetic: no speed is asserted anywhere (figures go to BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts that import each other by plain name, not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
pct = importlib.import_module("common").pct
_common = importlib.import_module("common")
steal_percent, idle_percent = _common.steal_percent, _common.idle_percent
CpuTicks, cpu_ticks = _common.CpuTicks, _common.cpu_ticks
parse_wrk = importlib.import_module("frontdoor").parse_wrk
goals = importlib.import_module("run").goals

WRK = """Running 15s test @ http://127.0.0.1:4000/api/comfyui/generate
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.10ms   10.00ms 400.00ms   90.00%
    Req/Sec     1.60k   200.00     2.00k    70.00%
  Latency Distribution
     50%  {p50}
     75%   25.00ms
     90%   30.00ms
     99%  {p99}
  48000 requests in 15.00s, 30.00MB read
{extra}Requests/sec:   3200.50
Transfer/sec:      2.00MB
"""


@pytest.mark.parametrize(("p50", "p99", "extra", "want"), [
    ("850.00us", "1.20s", "", {"p50_ms": 0.85, "p99_ms": 1200.0, "non_2xx": 0, "socket_errors": 0}),
    ("18.50ms", "2.00m", "  Socket errors: connect 0, read 3, write 0, timeout 7\n  Non-2xx or 3xx responses: 12\n",
     {"p50_ms": 18.5, "p99_ms": 120000.0, "non_2xx": 12, "socket_errors": 10}),
])
def test_parse_wrk(p50, p99, extra, want):
    got = parse_wrk(WRK.format(p50=p50, p99=p99, extra=extra))
    assert got == {"requests": 48000, "rps": 3200.5, **want}


def test_parse_wrk_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="could not read"):
        parse_wrk("unable to connect to 127.0.0.1:4000 Connection refused\n")


@pytest.mark.parametrize(("values", "q", "want"), [
    ([5.0], 95, 5.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    (list(map(float, range(1, 101))), 95, 95.0),
    (list(map(float, range(1, 101))), 99, 99.0),
    ([3.0, 1.0, 2.0], 100, 3.0),
])
def test_pct_is_nearest_rank(values, q, want):
    assert pct(values, q) == want


def test_goal_rows_say_met_missed_and_not_measured():
    res = {"results": {
        "overhead": {"status": "ok", "ratio_p50": 2.0},
        "cpu": {"status": "ok", "ms_per_job": {"total": 12.0}},
        "efficiency-4": {"status": "ok", "pods": 4, "busy_fraction": 0.9},
        "efficiency-200": {"status": "not run", "reason": "needs the multi-pod simulator"},
        "frontdoor": {"status": "ok", "summary": {"1": {"ratio": 1.25, "comfyfleet_p99_ms": 30.0,
                                                        "express_p99_ms": 20.0}}},
        "operator": {"status": "ok", "replicas": 200, "scale_up": {"seconds": {"registered": 45.0}}},
    }}
    rows = {r["what"]: r for r in goals(res)}
    overhead = rows["dispatch overhead: p50 comfyfleet / direct (trivial graph)"]
    assert (overhead["met"], overhead["by"]) == ("no", "missed: 33 % above the goal")
    assert rows["control-plane CPU per job (API + dispatchers + Redis)"]["met"] == "yes"
    busy = rows["fleet busy fraction, N = 4 pods"]
    assert (busy["figure"], busy["by"]) == ("90.0 %", "missed by 8.0 percentage points")
    n200 = rows["fleet busy fraction, N = 200 pods"]
    assert (n200["met"], n200["by"]) == ("n/a", "needs the multi-pod simulator")
    assert rows["fleet busy fraction, N = 32 pods"]["figure"] == "not measured"
    assert rows["front door req/s vs Express + Bull, 1 process(es)"]["met"] == "yes"
    p99 = rows["front door p99 vs Express + Bull, 1 process(es) (ratio, lower is better)"]
    assert (p99["figure"], p99["met"]) == ("1.50x", "no")
    scale = rows["operator: ComfyUIWorker of 200 pods, apply -> all registered for dispatch"]
    assert (scale["figure"], scale["goal"], scale["by"]) == ("45.0 s", "<= 30.0 s", "missed: 50 % above the goal")
    two = rows["front door req/s vs Express + Bull, 2 process(es)"]
    assert (two["figure"], two["by"]) == ("not measured", "not in this run")


@pytest.mark.parametrize(("start", "end", "want"), [
    (CpuTicks(10, 1000), CpuTicks(60, 2000), 5.0),  # 50 of 1000 ticks stolen
    (CpuTicks(10, 1000), CpuTicks(10, 2000), 0.0),  # none stolen
    (CpuTicks(10, 1000), CpuTicks(10, 1000), 0.0),  # no time passed: no division by zero
])
def test_steal_percent_is_the_stolen_share_of_the_ticks_between(start, end, want):
    assert steal_percent(start, end) == pytest.approx(want)


@pytest.mark.parametrize(("start", "end", "want"), [
    (CpuTicks(steal=0, total=1000, idle=100), CpuTicks(steal=0, total=2000, idle=350), 25.0),
    (CpuTicks(steal=5, total=1000, idle=100), CpuTicks(steal=9, total=2000, idle=100), 0.0),  # busy all along
    (CpuTicks(steal=5, total=1000, idle=100), CpuTicks(steal=5, total=1000, idle=100), 0.0),  # no time passed
])
def test_idle_percent_is_the_unused_share_of_the_ticks_between(start, end, want):
    assert idle_percent(start, end) == pytest.approx(want)


def test_cpu_ticks_reads_this_machine():
    start = cpu_ticks()
    end = cpu_ticks()
    assert 0 <= end.idle - start.idle <= end.total - start.total
    assert 0 <= steal_percent(start, end) <= 100 and 0 <= idle_percent(start, end) <= 100
