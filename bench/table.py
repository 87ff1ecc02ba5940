"""The benchmark's markdown report: the paths side by side, the load tools
on slurm-persist and on the hand-made ssh -L, where their CPU goes, #17's
goals with the ratio (or difference) each is judged by, and the rest of
the measures. With rounds (sidebyside.py), figures are the rounds'
medians and a goal is judged on the median round's ratio."""

from __future__ import annotations

import statistics
from collections.abc import Callable

OURS, BASE = "slurm-persist", "ssh -L (baseline)"
# Each load tool again with the relays on a core of their own (pinned.py).
PINNED = {"ab": "ab-pinned", "wrk": "wrk-pinned"}
OWN_CORE = "the relays on a core of their own"


def table(results: dict) -> str:
    return "\n\n".join(part for part in (paths(results), load_tools(results), cpu(results),
                                         goals(results), measures(results)) if part)


def paths(results: dict) -> str:
    lines = ["| path | download MB/s | upload MB/s | p50 new conn ms | p99 new conn ms | "
             "p50 keep-alive ms | p99 keep-alive ms |", "|---|---|---|---|---|---|---|"]
    for name, row in results["paths"].items():
        lines.append(f"| {name} | {row['mb_per_s']:.0f} | {row['upload_mb_per_s']:.0f} | "
                     f"{row['p50_new_ms']:.2f} | {row['p99_new_ms']:.2f} | "
                     f"{row['p50_keepalive_ms']:.2f} | {row['p99_keepalive_ms']:.2f} |")
    return "\n".join(lines)


def tool_names(settings: dict) -> dict[str, str]:
    names = {"ab": f"`ab -c50 -n{settings['ab_requests']}`, a new connection per request",
             "wrk": f"`wrk -c50 -t2 -d{settings['wrk_seconds']:g}s`, keep-alive"}
    return {**names, **{PINNED[tool]: f"{names[tool]}, {OWN_CORE}" for tool in names}}


def load_tools(results: dict) -> str:
    tools = results.get("tools")
    if not tools:
        return ""
    lines = ["| load tool, GET /health | path | req/s | median ms | p99 ms | failed |",
             "|---|---|---|---|---|---|"]
    dropped = tools[OURS].get("forwarder_failed")
    for tool, title in tool_names(results["settings"]).items():
        if tool not in tools[OURS]:
            continue
        for path in (OURS, BASE):
            row = tools[path][tool]
            lines.append(f"| {title} | {path} | {row['req_per_s']:.0f} | {row['p50_ms']:.2f} | "
                         f"{row['p99_ms']:.2f} | {row['failed']} of {row['requests']} |")
    if dropped:
        lines.append(f"\nThe forwarder closed {dropped} of these connections unanswered "
                     f"(ab counts those as complete).")
    if results.get("pinned_skipped"):
        lines.append(f"\nNo run with {OWN_CORE}: {results['pinned_skipped']}.")
    if results.get("pinned_unmovable"):
        lines.append(f"\nWith {OWN_CORE}, threads the kernel would not move: "
                     f"{', '.join(results['pinned_unmovable'])}.")
    return "\n".join(lines)


def cpu(results: dict) -> str:
    """Microseconds of CPU per request, by role, during each load tool."""
    costs = results.get("cpu")
    if not costs:
        return ""
    roles = list(costs[OURS]["ab"])
    lines = [f"| CPU per request, us | path | {' | '.join(roles)} |",
             "|---|---|" + "---|" * len(roles)]
    shared = {"ab": "ab, new connections", "wrk": "wrk, keep-alive"}
    titles = {**shared, **{PINNED[tool]: f"{name}, {OWN_CORE}" for tool, name in shared.items()}}
    for tool, title in titles.items():
        if tool not in costs[OURS]:
            continue
        for path in (OURS, BASE):
            cells = " | ".join(f"{costs[path][tool][role]:.0f}" for role in roles)
            lines.append(f"| {title} | {path} | {cells} |")
    return "\n".join(lines)


def judged(ratio: float, goal: float, at_least: bool = True) -> str:
    return "yes" if (ratio >= goal if at_least else ratio <= goal) else "no"


Pick = Callable[[dict, str], float]


def per_round(results: dict, pick: Pick) -> list[tuple[float, float]]:
    """(slurm-persist, baseline) of one figure in each round; the results'
    own figures when they have no rounds."""
    return [(pick(one, OURS), pick(one, BASE)) for one in results.get("rounds") or [results]]


def spread(values: list[float], form: str) -> str:
    return f" ({form.format(min(values))} to {form.format(max(values))})" if len(values) > 1 else ""


def goals(results: dict) -> str:
    """#17's goals: ours and the baseline's figure, the ratio or difference, met or not."""
    lines = ["| #17 goal | slurm-persist | ssh -L (baseline) | vs baseline | goal | met |",
             "|---|---|---|---|---|---|"]

    def ratio(what: str, pick: Pick, unit: str, goal: float) -> None:
        pairs = per_round(results, pick)
        ours, base = (statistics.median(pair[i] for pair in pairs) for i in (0, 1))
        ratios = [a / b if b else 0.0 for a, b in pairs]
        r = statistics.median(ratios)
        lines.append(f"| {what} | {ours:.0f} {unit} | {base:.0f} {unit} | "
                     f"{r:.2f}x{spread(ratios, '{:.2f}x')} | >= {goal}x | {judged(r, goal)} |")

    def plus(what: str, pick: Pick, goal: float) -> None:
        pairs = per_round(results, pick)
        ours, base = (statistics.median(pair[i] for pair in pairs) for i in (0, 1))
        diffs = [a - b for a, b in pairs]
        d = statistics.median(diffs)
        lines.append(f"| {what} | {ours:.2f} ms | {base:.2f} ms | "
                     f"{d:+.2f} ms{spread(diffs, '{:+.2f}')} | <= +{goal:g} ms | "
                     f"{judged(d, goal, at_least=False)} |")

    def tool(name: str, field: str) -> Pick:
        return lambda one, path: one["tools"][path][name][field]

    def path(field: str) -> Pick:
        return lambda one, which: one["paths"][which][field]

    def new_connections(name: str, where: str) -> None:
        ratio(f"new connections at c=50 (ab), rate{where}", tool(name, "req_per_s"), "req/s", 0.9)
        plus(f"new connections at c=50 (ab), median{where}", tool(name, "p50_ms"), 2)

    def keep_alive(name: str, where: str) -> None:
        ratio(f"keep-alive at c=50 (wrk), rate{where}", tool(name, "req_per_s"), "req/s", 1.0)

    def on_both(name: str, rows: Callable[[str, str], None]) -> None:
        """A load tool's goals on shared cores, then with the relays on a core
        of their own when every round has that run (summary)."""
        if results.get("tools"):
            rows(name, "")
        if PINNED[name] in results.get("tools", {}).get(OURS, {}):
            rows(PINNED[name], f", {OWN_CORE} and the rest of each path on one")

    on_both("ab", new_connections)
    ratio("bulk download", path("mb_per_s"), "MB/s", 0.95)
    ratio("bulk upload", path("upload_mb_per_s"), "MB/s", 0.95)
    plus("p50 of a new connection at c=1 (our client)", path("p50_new_ms"), 0.5)
    on_both("wrk", keep_alive)
    warm = results.get("startup_warm")
    if warm and warm.get("health_to_answer_s") is not None:
        late = warm["health_to_answer_s"]
        lines.append(f"| `up` with files deployed: first answer after the job's server passed "
                     f"its health check | {late:.2f} s (`up` to health {warm['to_health_s']:.1f} "
                     f"s, to first answer {warm['seconds']:.1f} s; `up` returned at "
                     f"{warm.get('up_returned_s', warm['seconds']):.1f} s) | | | <= 1 s | "
                     f"{judged(late, 1.0, False)} |")
    idle = results.get("idle_held")
    if idle:
        fewer = "" if idle["held"] >= idle["wanted"] else (
            f"; {idle['wanted']:,} wanted: {idle['why_fewer'] or 'see bench-results.json'}")
        lines.append(f"| {idle['wanted']:,} idle connections held: forwarder RSS | "
                     f"{idle['rss_mb']:.0f} MB ({idle['with_ssh_mb']:.0f} MB with its "
                     f"{idle['ssh_processes']} ssh processes) with {idle['held']:,} held{fewer} "
                     f"| | | < 200 MB | {judged(idle['rss_mb'], 200, False)} |")
    return "\n".join(lines)


def split(idle: dict) -> str:
    """Whose RSS the forwarder's is: `up --daemonize` runs a supervisor and a worker."""
    if "worker_rss_mb" not in idle:
        return ""
    return (f" (supervisor {idle['supervisor_rss_mb']} + worker {idle['worker_rss_mb']}; "
            f"its ssh processes {idle['ssh_rss_mb']} MB more)")


def measures(results: dict) -> str:
    fwd = results["forwarder"]
    rec = results["recovery_scancel"]
    lines = ["| measure | value | goal |", "|---|---|---|",
             f"| `up` to first answer, cold (nothing deployed) | "
             f"{results['startup_cold_s']:.1f} s | |",
             f"| `up` to first answer, warm (deployed, no chain) | "
             f"{results['startup_warm_s']:.1f} s | |",
             f"| recovery after scancel (no overlap) | {rec['seconds']} s, {rec['failed']} of "
             f"{rec['requests']} requests failed | <= heartbeat + 5 s |",
             f"| SLURM calls per hour while healthy | {results['slurm_calls_per_hour']} | 0 |",
             f"| forwarder idle | {fwd['idle']['rss_mb']} MB RSS{split(fwd['idle'])}, "
             f"{fwd['idle']['cpu_percent']}% CPU | < 60 MB, < 1% |",
             f"| forwarder at 50 req/s | {fwd['under_load_50rps']['rss_mb']} MB RSS, "
             f"{fwd['under_load_50rps']['cpu_percent']}% CPU | |"]
    if "replicas" in results:
        one, two = results["replicas"]["1"], results["replicas"]["2"]
        lines.append(f"| CPU-bound endpoint (20 ms a request, 8 clients): 1 replica, 2 replicas "
                     f"| {one['req_per_s']} and {two['req_per_s']} req/s "
                     f"({two['req_per_s'] / max(one['req_per_s'], 0.1):.2f}x; "
                     f"{one['failed'] + two['failed']} failed) | close to 2x |")
    if "rollover_overlap" in results:
        roll = results["rollover_overlap"]
        lines.append(f"| rollover with overlap | {roll['failed']} of {roll['requests']} requests "
                     f"failed | 0 |")
    return "\n".join(lines)
