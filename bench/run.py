"""`make bench`: every benchmark in one run, one table on stdout, BENCHMARKS.md rewritten.

Runs, in this order (each is also a script of its own with small-parameter flags, see its --help):
overhead.py (A/B trivial graph, comfyfleet vs direct), cpu.py (control-plane CPU per job), efficiency.py
(busy fraction at N = 4, 32, 200 pods), memory.py (dispatcher RSS with 200 jobs in flight),
dispatch_profile.py (pyinstrument of the dispatch path), frontdoor.py (comfyfleet vs Express + Bull
under wrk) and operator_scale.py (a ComfyUIWorker of 200 pods on the k8s tier's real kube-apiserver:
time to all registered, operator RSS and CPU, GenerationJob -> queued). Nothing here asserts speed:
figures are compared with the goals of issues 8 and 14 and reported. A benchmark that cannot run in this
checkout (a missing tool, the multi-pod simulator not there yet) is reported as not run with the reason;
one that fails is reported with its error, and the rest go on.

    python bench/run.py                      # everything, ~10-15 min on 2 cores; rewrites BENCHMARKS.md
    python bench/run.py --quick --no-write   # small parameters, a couple of minutes, nothing rewritten
    python bench/run.py --only overhead,cpu
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import api_profile
import autoscale_reaction
import cpu
import dispatch_profile
import efficiency
import frontdoor
import memory
import operator_scale
import overhead
from common import REPO, RESULTS, Unavailable, cpu_ticks, loadavg, machine, multi_pod_sim, steal_percent

BUDGET_SECONDS = 14 * 60  # stop starting new benchmarks after this; `make bench` promises < 15 min
NOTES_BEGIN = "<!-- notes: kept by bench/run.py across runs -->"
NOTES_END = "<!-- end notes -->"


def simulator_ceiling(pods: int, job_seconds: float = 1.0, jobs_per_pod: int = 10) -> dict[str, Any]:
    """bench/fleet.py --direct (the sim engineer's harness): the same 10 N jobs straight on N pods of one simulator
    process with a minimal client, no comfyfleet: the busy fraction this machine allows at all."""
    fleet = REPO / "bench" / "fleet.py"
    if not fleet.exists() or not multi_pod_sim():
        raise Unavailable("bench/fleet.py or the multi-pod simulator is not in this checkout")
    out = subprocess.run([sys.executable, str(fleet), "--pods", str(pods), "--job-seconds", str(job_seconds),
                          "--jobs-per-pod", str(jobs_per_pod), "--direct"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    busy = re.search(r"busy fraction ([\d.]+)", out.stdout)
    executed = re.search(r"pod execution per job \(/history\) median ([\d.]+) s", out.stdout)
    if out.returncode != 0 or busy is None:
        raise RuntimeError(f"bench/fleet.py --direct failed ({out.returncode}): {(out.stdout + out.stderr)[-800:]}")
    return {"pods": pods, "jobs": pods * jobs_per_pod, "job_seconds": job_seconds,
            "busy_fraction": float(busy.group(1)),
            "pod_execution_median_s": float(executed.group(1)) if executed else None, "output": out.stdout}


def plan(quick: bool) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    if quick:
        return [
            ("overhead", lambda: overhead.run(pairs=8, warmup=2)),
            ("cpu", lambda: cpu.run(jobs=40, pods=2)),
            ("efficiency-4", lambda: efficiency.run(pods=4, job_seconds=0.5, jobs_per_pod=4)),
            ("efficiency-32", lambda: efficiency.run(pods=8, job_seconds=0.5, jobs_per_pod=4)),
            ("efficiency-200", lambda: efficiency.run(pods=12, job_seconds=0.5, jobs_per_pod=4)),
            ("efficiency-4-prefetch", lambda: efficiency.run(pods=4, job_seconds=0.5, jobs_per_pod=4, prefetch=1)),
            ("ceiling-4", lambda: simulator_ceiling(pods=4, job_seconds=0.5, jobs_per_pod=4)),
            ("ceiling-32", lambda: simulator_ceiling(pods=8, job_seconds=0.5, jobs_per_pod=4)),
            ("ceiling-200", lambda: simulator_ceiling(pods=12, job_seconds=0.5, jobs_per_pod=4)),
            ("memory", lambda: memory.run(pods=8, steps=20, step_seconds=1.0)),
            ("profile", lambda: dispatch_profile.run(jobs=10, out_dir=RESULTS / "quick")),
            ("frontdoor", lambda: frontdoor.run(duration=3)),
            ("apiprofile", lambda: api_profile.run(duration=3, out_dir=RESULTS / "quick")),
            ("operator", lambda: operator_scale.run(replicas=30, jobs=10)),
            ("reaction", lambda: autoscale_reaction.run(rounds=3)),
        ]
    return [
        ("overhead", lambda: overhead.run(pairs=30)),
        ("cpu", lambda: cpu.run(jobs=150, pods=4, dispatchers=2)),
        ("efficiency-4", lambda: efficiency.run(pods=4)),
        ("efficiency-32", lambda: efficiency.run(pods=32)),
        ("efficiency-200", lambda: efficiency.run(pods=200)),
        # The same with the pools' prefetch: 1 (each pod gets its next prompt while it runs one): not the default,
        # so not a goal row; shown beside the default rows.
        ("efficiency-4-prefetch", lambda: efficiency.run(pods=4, prefetch=1)),
        ("efficiency-32-prefetch", lambda: efficiency.run(pods=32, prefetch=1)),
        ("ceiling-4", lambda: simulator_ceiling(pods=4)),
        ("ceiling-32", lambda: simulator_ceiling(pods=32)),
        ("ceiling-200", lambda: simulator_ceiling(pods=200)),
        ("memory", lambda: memory.run(pods=200)),
        ("profile", lambda: dispatch_profile.run(jobs=40)),
        # Two rounds: the goal rows take the median of each side's runs (one run moves by +-15 % on this host).
        ("frontdoor", lambda: frontdoor.run(duration=15, rounds=2)),
        ("apiprofile", lambda: api_profile.run(duration=8)),
        ("operator", lambda: operator_scale.run(replicas=200, jobs=50)),
        ("reaction", lambda: autoscale_reaction.run(rounds=10)),
    ]


def run_all(quick: bool, only: set[str] | None, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the plan (or the `only` part of it); `into`: a previous run's results that these are added to."""
    started, ticks = time.monotonic(), cpu_ticks()
    out: dict[str, Any] = {"machine": machine(), "load_start": loadavg(), "quick": quick,
                           "multi_pod_sim": multi_pod_sim(), "results": {}}
    if into is not None:
        out = into
        out.setdefault("added", []).append({"date": machine()["date"], "load": loadavg(), "only": sorted(only or [])})
    for name, fn in plan(quick):
        if only and name not in only and name.split("-")[0] not in only:
            continue
        if time.monotonic() - started > BUDGET_SECONDS:
            out["results"][name] = {"status": "not run", "reason": "the 14-minute budget of make bench was spent"}
            continue
        t0 = time.monotonic()
        print(f"== {name} (load {loadavg()})", flush=True)
        try:
            result = {"status": "ok", **fn()}
        except Unavailable as exc:
            result = {"status": "not run", "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not stop the others
            result = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:500]}",
                      "traceback": traceback.format_exc()}
        result["seconds"] = time.monotonic() - t0
        out["results"][name] = result
        print(f"   {line(name, result)}", flush=True)
    if into is None:
        out["load_end"] = loadavg()
        out["steal_percent"] = steal_percent(ticks, cpu_ticks())
        out["seconds"] = time.monotonic() - started
    return out


def line(name: str, r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    reporter = {"overhead": overhead.report, "cpu": cpu.report, "memory": memory.report,
                "profile": dispatch_profile.report, "frontdoor": frontdoor.report,
                "ceiling": ceiling_report, "apiprofile": api_profile.report,
                "operator": operator_scale.report, "reaction": autoscale_reaction.report}.get(name.split("-")[0])
    return (reporter or efficiency.report)(r)


def ceiling_report(r: dict[str, Any]) -> str:
    return (f"bench/fleet.py --direct, {r['pods']} pods x {r['jobs'] // r['pods']} jobs, no comfyfleet: busy "
            f"{r['busy_fraction'] * 100:.1f} %, pod execution per job median {r['pod_execution_median_s']} s")


# --- goals -------------------------------------------------------------------------------------------
def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal of issues 8 and 14: the figure, the goal, met or not and by how much."""
    rows: list[dict[str, Any]] = []

    def add(what: str, r: dict[str, Any] | None, figure: Callable[[dict[str, Any]], float], fmt: str, goal: float,
            higher_is_better: bool, unit: str = "") -> None:
        if r is None or r.get("status") != "ok":
            why = "" if r is None else r.get("reason", "")
            rows.append({"what": what, "figure": "not measured", "goal": "", "met": "n/a", "by": why[:160]})
            return
        value = figure(r)
        met = value >= goal if higher_is_better else value <= goal
        if met:
            by = ""
        elif unit == " %":
            by = f"missed by {goal - value:.1f} percentage points"
        else:
            off = abs(value - goal) / goal * 100
            by = f"missed: {off:.0f} % {'below' if higher_is_better else 'above'} the goal"
        rows.append({"what": what, "figure": fmt.format(value) + unit,
                     "goal": (">= " if higher_is_better else "<= ") + fmt.format(goal) + unit,
                     "met": "yes" if met else "no", "by": by})

    get = res["results"].get
    add("dispatch overhead: p50 comfyfleet / direct (trivial graph)", get("overhead"), lambda r: r["ratio_p50"],
        "{:.2f}", 1.5, False, "x")
    add("control-plane CPU per job (API + dispatchers + Redis)", get("cpu"), lambda r: r["ms_per_job"]["total"],
        "{:.1f}", 20.0, False, " ms")
    for n in (4, 32, 200):
        r = get(f"efficiency-{n}")
        label = f"fleet busy fraction, N = {r['pods'] if r and r.get('status') == 'ok' else n} pods"
        add(label, r, lambda r: r["busy_fraction"] * 100, "{:.1f}", 98.0, True, " %")
        ceiling = get(f"ceiling-{n}")
        if ceiling and ceiling.get("status") == "ok":
            alone = f"{ceiling['busy_fraction'] * 100:.1f} %"
            rows[-1]["by"] = "; ".join(filter(None, [rows[-1]["by"], (
                f"the simulator alone with a minimal client (no comfyfleet) reaches {alone} on {ceiling['pods']} "
                "pods of this machine")]))
    add("total dispatcher RSS with all pods' jobs in flight (200 in the full run)", get("memory"),
        lambda r: r["busy_mib"]["dispatchers"] * 2**20 / 1e6, "{:.0f}", 300.0, False, " MB")
    op = get("operator")
    add(f"operator: ComfyUIWorker of {op['replicas'] if op and op.get('status') == 'ok' else 200} pods, apply -> "
        "all registered for dispatch", op, lambda r: r["scale_up"]["seconds"]["registered"], "{:.1f}", 30.0, False,
        " s")
    add("autoscaler: burst queued -> the pods it asks for created, worst of repeated bursts", get("reaction"),
        lambda r: r["max_s"], "{:.2f}", 1.0, False, " s")
    fd = get("frontdoor")
    for n in ("1", "2"):
        if fd and fd.get("status") == "ok" and n in fd["summary"]:
            s = fd["summary"][n]
            add(f"front door req/s vs Express + Bull, {n} process(es)", {"status": "ok", **s}, lambda r: r["ratio"],
                "{:.2f}", 1.0, True, "x")
            add(f"front door p99 vs Express + Bull, {n} process(es) (ratio, lower is better)", {"status": "ok", **s},
                lambda r: r["comfyfleet_p99_ms"] / r["express_p99_ms"], "{:.2f}", 1.0, False, "x")
        else:
            missing = (fd if fd is None or fd.get("status") != "ok"
                       else {"status": "not run", "reason": "not in this run"})
            add(f"front door req/s vs Express + Bull, {n} process(es)", missing, lambda r: 0.0, "{:.2f}", 1.0, True)
    return rows


# --- output ------------------------------------------------------------------------------------------
def table(rows: list[list[str]], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "–"


def markdown(res: dict[str, Any], notes: str) -> str:
    m, r = res["machine"], res["results"]
    ok = {k: v for k, v in r.items() if v.get("status") == "ok"}
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); every figure below comes from that one run. Nothing asserts "
        "speed: the figures are compared with the goals of issue 8 (dispatch) and issue 14 (front door, memory). "
        "Load generator, servers, Redis and simulators share the machine's cores.",
        "",
        table([
            ["date", m["date"]], ["git commit", m["commit"]], ["CPUs (`nproc`)", m["nproc"]],
            ["CPU model", m["cpu_model"]], ["memory", f"{m['memory_gib']} GiB"], ["Python", m["python"]],
            ["load average at start (1/5/15 min)", res["load_start"]], ["load average at end", res["load_end"]],
            ["CPU steal during the run (the hypervisor running other guests on these cores)",
             f"{res['steal_percent']:.1f} %" if "steal_percent" in res else "not recorded"],
            ["duration", f"{res['seconds'] / 60:.1f} min" + (" (quick parameters)" if res["quick"] else "")],
            ["simulated pods", "many per process (`comfyfleet sim --count`)" if res["multi_pod_sim"]
             else "one process per pod (the multi-pod simulator is not in this checkout)"],
        ], ["run", ""]),
        "",
        *[f"Added after the run: {', '.join(a['only'])} at {a['date']} (load {a['load']}).\n"
          for a in res.get("added", [])],
        f"The machine is shared with other work (load average {res['load_start']} at the start on "
        f"{m['nproc']} CPUs) and, as a virtual machine, with other guests (the steal row), so absolute figures are "
        "noisy; the A/B figures alternate their two sides in one run so that drift hits both.",
        "",
        "## Goals",
        "",
        table([[g["what"], g["figure"], g["goal"], g["met"],
                g["by"] + ("; where the time goes: the profiles and Notes below" if g["met"] == "no" else "")]
               for g in goals(res)], ["what", "figure", "goal", "met", "by how much / why"]),
        "",
    ]
    if "overhead" in ok:
        o = ok["overhead"]
        parts += [
            "## Dispatch overhead (issue 8): trivial graph, comfyfleet vs direct, A/B",
            "",
            "A = `POST /api/comfyui/generate {\"template\": \"weightless\"}` -> job followed over SSE to its final "
            "state -> output fetched from the API. B = the same graph straight to the same simulator with a minimal "
            "client (new websocket, POST /prompt, wait for `executing` null, GET /history, GET /view). One "
            f"simulator, one dispatcher, {o['pairs']} pairs alternating AB/BA after warm-up.",
            "",
            table([["comfyfleet (A)", _f(o["comfyfleet_p50_ms"]), _f(o["comfyfleet_p95_ms"])],
                   ["direct (B)", _f(o["direct_p50_ms"]), _f(o["direct_p95_ms"])],
                   ["ratio A/B", _f(o["ratio_p50"], "{:.2f}x"), _f(o["ratio_p95"], "{:.2f}x")]],
                  ["", "p50 ms", "p95 ms"]),
            "",
        ]
    if "cpu" in ok:
        c = ok["cpu"]
        mj = c["ms_per_job"]
        parts += [
            "## Control-plane CPU per job (issue 8)",
            "",
            f"{c['jobs']} trivial jobs on {c['pods']} simulated pods, {c['dispatchers']} dispatchers, 8 submitting "
            f"at a time ({c['jobs_per_s']:.1f} jobs/s); utime + stime from /proc of each process tree over the batch. "
            f"The control plane's idle loops (health probes, maintenance) cost {c['idle_cpu_per_s'] * 1000:.0f} ms "
            f"of CPU per second, {c['idle_ms_per_job']:.1f} ms per job at this rate, included below.",
            "",
            table([["API", _f(mj["api"])], ["dispatchers", _f(mj["dispatchers"])], ["Redis", _f(mj["redis"])],
                   ["**total**", f"**{_f(mj['total'])}**"]], ["part", "ms CPU per job"]),
            "",
        ]
    eff = [(k, v) for k, v in r.items() if k.startswith("efficiency")]
    if eff:
        rows = []
        for k, v in eff:
            if v.get("status") != "ok":
                rows.append([k.split("-")[1], "1" if k.endswith("prefetch") else "0",
                             v["status"] + ": " + v.get("reason", "")[:120], "", "", "", "", "", ""])
                continue
            f = v["first_start_s"]
            rows.append([v["pods"], v.get("prefetch", 0), v["jobs"], f"{v['job_seconds']:.1f} s",
                         _f(v["submit_s"], "{:.1f} s"),
                         _f(v["makespan_s"], "{:.2f} s"), f"**{v['busy_fraction'] * 100:.1f} %**",
                         f"{_f(f['min'], '{:.2f}')} / {_f(f['p50'], '{:.2f}')} / {_f(f['max'], '{:.2f}')} s",
                         _f(v["control_ms_per_job"])])
        parts += [
            "## Fleet efficiency (issue 8)",
            "",
            "N simulated pods, 10 N txt2img jobs (64x64) of T = 10 steps x 0.1 s each, 2 dispatcher processes, posted "
            "through the API 16 at a time after one warm-up round of N jobs. busy fraction = ideal (10 T) / makespan "
            "(first submit -> last job finished); submitting is inside the makespan. prefetch: the pools' setting "
            "(0 by default; 1 queues each pod's next prompt on it while it runs one).",
            "",
            table(rows, ["N pods", "prefetch", "jobs", "T", "submitting took", "makespan", "busy fraction",
                         "first job per pod min / p50 / max", "control-plane ms CPU/job"]),
            "",
        ]
        ceilings = [(k, v) for k, v in r.items() if k.startswith("ceiling-") and v.get("status") == "ok"]
        if ceilings:
            parts += [
                "What the machine allows without comfyfleet: `bench/fleet.py --direct` runs the same jobs straight on "
                "the pods of one simulator process with a minimal client (new websocket, POST /prompt, wait, "
                "/history, /view); its busy fraction is the most any dispatcher could reach here (the simulator's "
                "pods share one GIL and the machine's cores).",
                "",
                table([[v["pods"], v["jobs"], f"{v['job_seconds']:.1f} s", f"**{v['busy_fraction'] * 100:.1f} %**",
                        _f(v["pod_execution_median_s"], "{:.3f} s")] for _, v in ceilings],
                      ["N pods", "jobs", "T", "busy fraction (simulator alone)", "pod execution per job, median"]),
                "",
            ]
    mem_rows = []
    if "overhead" in ok:
        o = ok["overhead"]
        mem_rows += [["API (1 process)", _f(o["rss_idle_mib"]["api"], "{:.0f}"),
                      _f(o["rss_busy_mib"]["api"], "{:.0f}"), "one job at a time (overhead bench)"],
                     ["dispatcher (1 process, 1 pod)", _f(o["rss_idle_mib"]["dispatcher"], "{:.0f}"),
                      _f(o["rss_busy_mib"]["dispatcher"], "{:.0f}"), "one job at a time"],
                     ["simulated pod (own process)", _f(o["rss_idle_mib"]["pod"], "{:.0f}"),
                      _f(o["rss_busy_mib"]["pod"], "{:.0f}"), "one job at a time"]]
    if "memory" in ok:
        mm = ok["memory"]
        n = mm["pods"]
        mem_rows += [[f"dispatchers, total of {mm['dispatchers']}", _f(mm["idle_mib"]["dispatchers"], "{:.0f}"),
                      f"**{_f(mm['busy_mib']['dispatchers'], '{:.0f}')}**",
                      f"{mm['in_flight']} jobs in flight on {n} pods ({mm['per_job_kib']:.0f} KiB per job)"],
                     ["API (1 process)", _f(mm["idle_mib"]["api"], "{:.0f}"), _f(mm["busy_mib"]["api"], "{:.0f}"),
                      f"{n} pods registered, {mm['in_flight']} jobs running"],
                     [f"simulator hosting {n} pods" if mm["multi_pod_sim"] else f"{n} simulator processes",
                      _f(mm["idle_mib"]["sim_total"], "{:.0f}"), _f(mm["busy_mib"]["sim_total"], "{:.0f}"),
                      f"{mm['sim_per_pod_mib']:.1f} MiB per pod under load"]]
    if "frontdoor" in ok:
        for x in _first_of_each(ok["frontdoor"]["runs"]):
            label = (f"API, `comfyfleet api --workers {x['processes']}`" if x["kind"] == "comfyfleet"
                     else f"Express + Bull, {x['processes']} process(es)")
            mem_rows.append([label, _f(x["idle_rss_mib"], "{:.0f}"), _f(x["load_rss_mib"], "{:.0f}"),
                             f"wrk, {ok['frontdoor']['connections']} connections (peak)"])
    if "operator" in ok:
        op = ok["operator"]
        under = max(op["scale_up"]["operator"]["peak_rss_mib"], op["steady"]["peak_rss_mib"],
                    op["generationjobs"]["operator"]["peak_rss_mib"])
        mem_rows.append(["operator (1 process)", _f(op["idle"]["rss_mib"], "{:.0f}"), _f(under, "{:.0f}"),
                         f"a ComfyUIWorker of {op['replicas']} pods coming up and probed every "
                         f"{op['probe_interval_s']:g} s, then {op['generationjobs']['jobs']} GenerationJobs (peak; "
                         "idle: no pools)"])
    if mem_rows:
        parts += [
            "## Memory (issues 8 and 14): RSS in MiB",
            "",
            "RSS of each process tree from /proc (uvicorn's supervisor and workers, node's cluster primary and "
            "workers counted together; shared pages count once per process). The operator's row comes from the "
            "operator benchmark below (the k8s tier's real kube-apiserver).",
            "",
            table(mem_rows, ["process", "idle", "under load", "load"]),
            "",
        ]
    if "frontdoor" in ok:
        fd = ok["frontdoor"]
        rows = [[x["kind"], x["processes"], _f(x["rps"], "{:.0f}"), _f(x["p50_ms"]), _f(x["p99_ms"]),
                 _f(x["cpu_ms_per_req"], "{:.2f}"), _f(x["redis_cpu_ms_per_req"], "{:.2f}"),
                 _f(x.get("redis_cmds_per_req"), "{:.1f}"), _f(x.get("wrk_cpu_ms_per_req"), "{:.2f}"),
                 _f(x.get("idle_percent"), "{:.0f}"), x["requests"], x["non_2xx"], x["socket_errors"]]
                for x in fd["runs"]]
        parts += [
            "## Front door vs Express 5 + Bull 4 (issue 14)",
            "",
            f"`wrk -t2 -c{fd['connections']} -d{fd['duration_s']}s --latency` POSTing "
            "`{\"template\": \"weightless\"}` "
            "to `/api/comfyui/generate` after 2 s of unmeasured warm-up; fresh redis-server per run, no dispatcher "
            "(jobs only queue). comfyfleet: `comfyfleet api --workers N` (uvloop + httptools), one healthy simulator, "
            "so the graph is validated against its node catalog. Express: `bench/express/server.js` (same fields "
            "and limits, a Bull queue per priority), node cluster for 2. Runs in the order listed; the goal rows "
            "compare the medians of each side's runs. `idle %`: the machine's CPU time that no process used during "
            "the run (server, Redis and wrk share the cores, so idle time means the server waited, not that it "
            "ran out of CPU).",
            "",
            table(rows, ["server", "processes", "req/s", "p50 ms", "p99 ms", "server ms CPU/req",
                         "Redis ms CPU/req", "Redis commands/req", "wrk ms CPU/req", "idle %", "requests",
                         "non-2xx", "socket errors"]),
            "",
            "Redis commands per request by command (INFO commandstats over the measured 15 s; background "
            "traffic included), first run of each:",
            "",
            *[f"- {x['kind']} x{x['processes']}: " + ", ".join(f"{k} {v}" for k, v in
                                                             x.get("redis_top_cmds_per_req", {}).items())
              for x in _first_of_each(fd["runs"]) if x["processes"] == 1],
            "",
        ]
    if "profile" in ok:
        p = ok["profile"]
        threads = ", ".join(f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in p["thread_cpu_ms_per_job"].items())
        parts += [
            "## Profile of the dispatch path (issue 8)",
            "",
            f"The dispatcher under pyinstrument (`bench/profiled_dispatcher.py`, sampling switched on for the batch "
            f"only) while {p['jobs']} trivial jobs ran one after another through the API. Dispatcher CPU "
            f"{p['dispatcher_cpu_ms_per_job']:.1f} ms per job while profiled ({threads}); pyinstrument samples the "
            "event-loop thread only, in wall-clock time (so waits for a CPU on a loaded machine count). Full tree: "
            "[bench/results/profile-dispatcher.txt](bench/results/profile-dispatcher.txt).",
            "",
            "Inclusive time per job (event-loop thread, ms):",
            "",
            table([[_f(v, "{:.2f}"), f"`{k}`"] for k, v in p["top_inclusive_ms_per_job"][:15]], ["ms/job", "function"]),
            "",
            "Tracked hot spots (inclusive ms per job): "
            + ", ".join(f"`{k}` {v:.2f}" for k, v in p.get("watched_ms_per_job", {}).items())
            + " (httpcore's `import sniffio` at every lock it made, 4-5 ms per job when sniffio was missing; the "
            "dispatcher no longer uses httpx/httpcore for pods, so both should stay near 0).",
            "",
            "Own time per job (the loop's idle `epoll.poll` left out, ms). Wall-clock sampling in a process with "
            "I/O threads: time the event-loop thread spends waiting for the GIL lands on the C call it was about "
            "to make (`isinstance`, `socket.send`, `SimpleQueue.put`), so large own times on builtins are "
            "mostly GIL and CPU waits, not work.",
            "",
            table([[_f(v, "{:.2f}"), f"`{k}`"] for k, v in p["top_own_ms_per_job"][:12]], ["ms/job", "function"]),
            "",
        ]
    if "apiprofile" in ok:
        a = ok["apiprofile"]
        parts += [
            "## Profile of the front door (issue 14)",
            "",
            f"`comfyfleet api` (1 process) under pyinstrument (`bench/profiled_api.py`) while wrk -t2 -c64 "
            f"POSTed for {a['duration_s']} s: {a['rps']:.0f} req/s with the profiler on, "
            f"{a['api_cpu_ms_per_req']:.2f} ms of API CPU per request (profiling included). Event-loop thread only, "
            "wall clock; the submit is one Redis script call on the API's asyncio client (fair-use admit, job "
            "record and event, RQ job and queue entry, wake), whose wait shows as time in the event loop. The route "
            "is served by the front door's fast path (`comfyfleet/api/frontdoor.py`), in front of FastAPI's routing, "
            "dependency solving and middleware; the FastAPI route answers only what it hands back. Full tree: "
            "[bench/results/profile-api.txt](bench/results/profile-api.txt).",
            "",
            table([[_f(v, "{:.0f}"), f"`{k}`"] for k, v in a["top_inclusive_us_per_req"][:30]],
                  ["µs/request", "function (inclusive)"]),
            "",
        ]
    if "operator" in ok:
        parts += operator_section(ok["operator"])
    if "reaction" in ok:
        rr = ok["reaction"]
        parts += [
            "## Autoscaler reaction (issue 14)",
            "",
            f"`bench/autoscale_reaction.py` on the k8s tier's real etcd + kube-apiserver: `comfyfleet operator` with a "
            f"{rr['probe_interval_s']:g} s timer (so the timer never helps), no kubelet or dispatchers. Each round "
            f"applies a fresh autoscaled pool (min 0, max {rr['pods']}, one job per pod), waits for ScaledToZero, "
            f"queues {rr['burst']} jobs the way the API does and times the moment the pool has {rr['pods']} pods "
            "(the operator decides on the dispatch wake-up, not on its timer).",
            "",
            table([[rr["rounds"], _f(rr["p50_s"] * 1000, "{:.0f} ms"), _f(rr["max_s"] * 1000, "{:.0f} ms"),
                    _f(rr["min_s"] * 1000, "{:.0f} ms")]], ["bursts", "p50", "max", "min"]),
            "",
        ]
    failed = {k: v for k, v in r.items() if v.get("status") != "ok"}
    if failed:
        parts += ["## Not run or failed", ""]
        parts += [f"- **{k}**: {v['status']}: {v.get('reason', '')}" for k, v in failed.items()]
        parts.append("")
    parts += ["## Notes", "", NOTES_BEGIN, notes.strip() or "(none yet)", NOTES_END, ""]
    return "\n".join(parts)


def operator_section(op: dict[str, Any]) -> list[str]:
    """The operator scale table (issue 14)."""
    s, up, rest, gj = (op["scale_up"]["seconds"], op["scale_up"]["operator"], op["steady"], op["generationjobs"])
    n = op["replicas"]
    return [
        "## Operator scale (issue 14)",
        "",
        f"`bench/operator_scale.py` on the k8s tier's real etcd + kube-apiserver: `comfyfleet operator` as the chart's "
        f"ServiceAccount, probe interval {op['probe_interval_s']:g} s (the production default), the CRD's default "
        "probe settings, no dispatch processes (jobs only queue). The kubelet stand-in (tests/k8s/operator_harness.py) "
        f"hosts the {n} simulated pods in {op['sim_processes']} simulator process(es), one loopback address each, and "
        "writes their Ready status 4 at a time. Times from the create call of a ComfyUIWorker of "
        f"{n} replicas; polled every {operator_scale.POLL_SECONDS} s. Load average {op['load']['start']} at the "
        f"start, {op['load']['end']} at the end.",
        "",
        table([[f"all {n} pods created", _f(s["created"], "{:.1f} s")],
               [f"all {n} pods Ready (kubelet stand-in)", _f(s["ready"], "{:.1f} s")],
               [f"**all {n} pods registered for dispatch (Redis, healthy)**", f"**{_f(s['registered'], '{:.1f} s')}**"],
               ["operator CPU during the scale-up", f"{up['cpu_s']:.1f} s ({up['cpu_percent']:.0f} % of a core)"],
               ["operator RSS: idle (no pools) / peak during the scale-up",
                f"{op['idle']['rss_mib']:.0f} / {up['peak_rss_mib']:.0f} MiB"],
               [f"operator CPU at rest with {n} pods (probes every {op['probe_interval_s']:g} s)",
                f"{rest['cpu_percent']:.1f} % of a core over {rest['wall_s']:.0f} s"],
               [f"GenerationJob applied -> job queued in Redis, p50 / p90 / max of {gj['jobs']}",
                f"{gj['to_redis']['p50_ms']:.0f} / {gj['to_redis']['p90_ms']:.0f} / {gj['to_redis']['max_ms']:.0f} ms"],
               ["GenerationJob applied -> `status.phase: Queued`, p50 / p90 / max",
                f"{gj['to_status']['p50_ms']:.0f} / {gj['to_status']['p90_ms']:.0f} / "
                f"{gj['to_status']['max_ms']:.0f} ms"]],
              ["", ""]),
        "",
        "Counts over time (seconds after the apply: pods, Ready, registered): "
        + ", ".join(f"{t:g}: {c}/{rd}/{rg}" for t, c, rd, rg in op["scale_up"]["timeline"]) + ".",
        "",
    ]


def _first_of_each(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first front-door run of each (server, processes)."""
    seen: set[tuple[str, int]] = set()
    first = []
    for x in runs:
        if (x["kind"], x["processes"]) not in seen:
            seen.add((x["kind"], x["processes"]))
            first.append(x)
    return first


def kept_notes(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return ""


def print_table(res: dict[str, Any]) -> None:
    rows = goals(res)
    width = max(len(g["what"]) for g in rows)
    print()
    print(f"comfyfleet benchmarks: {res['machine']['date']}, commit {res['machine']['commit']}, "
          f"{res['machine']['nproc']} CPUs, load {res['load_start']} -> {res['load_end']}, "
          f"{res['seconds'] / 60:.1f} min")
    print(f"{'what':<{width}}  {'figure':>12}  {'goal':>10}  met  by how much / why")
    for g in rows:
        print(f"{g['what']:<{width}}  {g['figure']:>12}  {g['goal']:>10}  {g['met']:<3}  {g['by']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small parameters (a couple of minutes)")
    parser.add_argument("--only", help="comma list: overhead, cpu, efficiency, ceiling, memory, profile, frontdoor, "
                                       "apiprofile, operator, reaction")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--from-json", type=Path, help="run nothing: re-render these results (bench/results/*.json)")
    parser.add_argument("--add-to", type=Path, help="run --only and add the results to this earlier run's JSON "
                                                    "(BENCHMARKS.md says what was added when)")
    args = parser.parse_args()
    if args.from_json:
        res = json.loads(args.from_json.read_text())
    elif args.add_to:
        res = run_all(args.quick, set(args.only.split(",")) if args.only else None,
                      into=json.loads(args.add_to.read_text()))
        args.add_to.write_text(json.dumps(res, indent=1, default=str))
    else:
        only = set(args.only.split(",")) if args.only else None
        res = run_all(args.quick, only)
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "latest-quick.json" if args.quick else "latest.json"
        (RESULTS / name).write_text(json.dumps(res, indent=1, default=str))
    print_table(res)
    if not args.no_write:
        path = REPO / "BENCHMARKS.md"
        path.write_text(markdown(res, kept_notes(path)))
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
