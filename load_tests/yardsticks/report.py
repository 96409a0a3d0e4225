"""The end-to-end benchmark's verdicts and its printed table (pure: a report dict in, text out)."""

from __future__ import annotations

from typing import Any

TARGETS = {"vs_ceiling": 0.60, "vs_naive": 2.5, "p99_ms": 50.0, "bytes_per_user": 1024.0}


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    ours, ceiling, naive = (report[k]["events_per_s"] for k in ("engine", "ceiling", "naive"))
    cpu = {k: report[k].get("cpu_us_per_event") for k in ("engine", "ceiling", "naive")}
    return {
        "vs_ceiling": round(ours / ceiling, 3) if ceiling else None,
        "vs_naive": round(ours / naive, 2) if naive else None,
        # the same ratios from CPU time per event of each worker process: fairer when others share the CPUs
        "vs_ceiling_cpu": round(cpu["ceiling"] / cpu["engine"], 3) if cpu["engine"] and cpu["ceiling"] else None,
        "vs_naive_cpu": round(cpu["naive"] / cpu["engine"], 2) if cpu["engine"] and cpu["naive"] else None,
        "p99_ms": report["latency"]["e2e_ms"]["p99"],  # None: decisions missing, worse than any figure
        "bytes_per_user": report["memory"]["bytes_per_active_user"],
    }


def _verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "MISS"
    return "ok" if (value >= target if higher_is_better else value <= target) else "MISS"


def _fmt(value: float | None, spec: str) -> str:
    return spec.format(value) if value is not None else "n/a"


def _latency_cell(lat: dict[str, Any]) -> str:
    e2e = lat["e2e_ms"]
    p99 = f"{e2e['p99']}" if e2e["p99"] is not None else f"> {lat['settle_s']:.0f} s"
    return f"{e2e['p50'] if e2e['p50'] is not None else '-'} / {p99} ms"


def table(report: dict[str, Any]) -> str:
    r, mem, t, p = report["ratios"], report["memory"], TARGETS, report["plan"]
    def cpu(key: str) -> str:
        us = report[key].get("cpu_us_per_event")
        return f"{us:.0f} µs CPU/event" if us else ""

    rows = [
        ("events/s, one engine worker, flat out", f"{report['engine']['events_per_s']:,.0f}", cpu("engine"), ""),
        ("ceiling yardstick (count, take 2000)", f"{report['ceiling']['events_per_s']:,.0f}", cpu("ceiling"), ""),
        ("naive yardstick (decode+table+send)", f"{report['naive']['events_per_s']:,.0f}", cpu("naive"), ""),
        ("engine code alone (no Kafka, no Faust)", _fmt(report["engine_core"].get("events_per_s"), "{:,.0f}"),
         cpu("engine_core") or report["engine_core"].get("error", "")[:60], ""),
        ("ours / ceiling", f"{r['vs_ceiling']:.1%}", "≥ 60 %", _verdict(r["vs_ceiling"], t["vs_ceiling"])),
        ("  by CPU time per event", _fmt(r["vs_ceiling_cpu"], "{:.1%}"), "", ""),
        ("ours / naive", f"{r['vs_naive']:.2f}×", "≥ 2.5×", _verdict(r["vs_naive"], t["vs_naive"])),
        ("  by CPU time per event", _fmt(r["vs_naive_cpu"], "{:.2f}×"), "", ""),
        ("Redis CPU per event (Lua, server side)", f"{report['redis_cpu']['cpu_us_per_event']:.0f} µs", "", ""),
    ]
    for key in ("latency_easy", "latency"):
        lat = report[key]
        target = ("p99 ≤ 50 ms", _verdict(r["p99_ms"], t["p99_ms"], False)) if key == "latency" else ("", "")
        behind = "" if lat["kept_up"] else " (fell behind)"
        rows.append((f"e2e p50 / p99 at {lat['target_rate']:,}/s{behind}", _latency_cell(lat), *target))
        hist = lat["worker_histogram_ms"]
        rows.append(("  worker histogram p50 / p99", f"{hist['p50']} / {hist['p99']} ms", "", ""))
        wait = lat.get("worker_intake_wait_ms")
        if wait:
            rows.append(("    of which intake wait p50 / p99", f"{wait['p50']} / {wait['p99']} ms", "", ""))
        inside = lat.get("worker_internals")
        if inside and inside["batches"]:
            rows.append(("  batches: events, ms each (Redis apply+write)",
                         f"{inside['batch_size_mean']} ev, {inside['batch_processing_ms_mean']} ms "
                         f"({inside['store_apply_ms_mean']}+{inside['store_write_ms_mean']})", "", ""))
            lag = f"{inside['loop_lag_ms_mean']} / {inside['loop_lag_ms_p99']} ms"
            rows.append(("  event-loop lag mean / p99", lag, "", ""))
        cpu = lat.get("cpu_cores")
        if cpu:
            rows.append((f"  CPU cores used (of {cpu['cpus']}): {cpu['total']}",
                         ", ".join(f"{name} {'exited' if cores is None else cores}"
                                   for name, cores in cpu["cores"].items())
                         + f"; other processes {cpu['rest_of_machine']}, stolen by the host {cpu['stolen']}",
                         "", ""))
    rows += [
        ("Redis bytes per active user (used_memory)", f"{mem['bytes_per_active_user']:,.0f} B", "≤ 1 KiB",
         _verdict(r["bytes_per_user"], t["bytes_per_user"], False)),
        ("  MEMORY USAGE per user key (mean)", f"{mem['memory_usage_mean_bytes']:,.0f} B", "", ""),
    ]
    head = (f"cadence end-to-end benchmark: {p['events']:,} events, {report['mix']['active_users']:,} active "
            f"users, {p['partitions']} partitions, {report['cpus']} CPUs, load {report['load_at_start']}")
    lines = [head, ""] + [f"  {a:<44} {b:>20}  {c:<18} {d}" for a, b, c, d in rows]
    return "\n".join(lines + [f"  ! {w}" for w in report["warnings"]])


def warnings(report: dict[str, Any]) -> list[str]:
    cpus = report["cpus"] or 1
    phases = [("start", report["load_at_start"])]
    phases += [(k, report[k]["load_before"])
               for k in ("ceiling", "engine", "latency_easy", "latency", "naive") if k in report]
    busy = [f"{where} {load[0]}" for where, load in phases if load[0] > 0.5 * cpus]
    out = []
    if busy:
        out.append(f"busy machine ({cpus} CPUs), 1-min load average before: {', '.join(busy)}; "
                   "every contender shares the CPUs with other work, compare ratios rather than rates")
    out += [f"{k} did not drain its backlog in time" for k in ("ceiling", "engine", "naive")
            if not report[k]["complete"]]
    for k in ("engine", "engine_core"):  # (fallback decisions also count users without consent: not flagged)
        errors = report.get(k, {}).get("store_errors") or 0
        if errors:
            out.append(f"{k}: {errors:.0f} feature-store errors (batches answered with fallback decisions): "
                       "its rate is not that of the full decision path")
    return out
