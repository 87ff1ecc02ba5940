"""The benchmark's markdown report: the paths side by side, the load tools
on slurm-persist and on the hand-made ssh -L, #17's goals with the ratio
(or difference) each is judged by, and the rest of the measures."""

from __future__ import annotations

OURS, BASE = "slurm-persist", "ssh -L (baseline)"


def table(results: dict) -> str:
    return "\n\n".join(part for part in (paths(results), load_tools(results), goals(results),
                                         measures(results)) if part)


def paths(results: dict) -> str:
    lines = ["| path | download MB/s | upload MB/s | p50 new conn ms | p99 new conn ms | "
             "p50 keep-alive ms | p99 keep-alive ms |", "|---|---|---|---|---|---|---|"]
    for name, row in results["paths"].items():
        lines.append(f"| {name} | {row['mb_per_s']:.0f} | {row['upload_mb_per_s']:.0f} | "
                     f"{row['p50_new_ms']:.2f} | {row['p99_new_ms']:.2f} | "
                     f"{row['p50_keepalive_ms']:.2f} | {row['p99_keepalive_ms']:.2f} |")
    return "\n".join(lines)


def tool_names(settings: dict) -> dict[str, str]:
    return {"ab": f"`ab -c50 -n{settings['ab_requests']}`, a new connection per request",
            "wrk": f"`wrk -c50 -t2 -d{settings['wrk_seconds']:g}s`, keep-alive"}


def load_tools(results: dict) -> str:
    tools = results.get("tools")
    if not tools:
        return ""
    lines = ["| load tool, GET /health | path | req/s | median ms | p99 ms | failed |",
             "|---|---|---|---|---|---|"]
    dropped = tools[OURS].get("forwarder_failed")
    for tool, title in tool_names(results["settings"]).items():
        for path in (OURS, BASE):
            row = tools[path][tool]
            lines.append(f"| {title} | {path} | {row['req_per_s']:.0f} | {row['p50_ms']:.2f} | "
                         f"{row['p99_ms']:.2f} | {row['failed']} of {row['requests']} |")
    if dropped:
        lines.append(f"\nThe forwarder closed {dropped} of these connections unanswered "
                     f"(ab counts those as complete).")
    return "\n".join(lines)


def judged(ratio: float, goal: float, at_least: bool = True) -> str:
    return "yes" if (ratio >= goal if at_least else ratio <= goal) else "no"


def goals(results: dict) -> str:
    """#17's goals: ours and the baseline's figure, the ratio or difference, met or not."""
    ours, base = results["paths"][OURS], results["paths"][BASE]
    lines = ["| #17 goal | slurm-persist | ssh -L (baseline) | vs baseline | goal | met |",
             "|---|---|---|---|---|---|"]

    def ratio(what: str, a: float, b: float, unit: str, goal: float) -> None:
        r = a / b if b else 0.0
        lines.append(f"| {what} | {a:.0f} {unit} | {b:.0f} {unit} | {r:.2f}x | >= {goal}x | "
                     f"{judged(r, goal)} |")

    def plus(what: str, a: float, b: float, goal: float) -> None:
        lines.append(f"| {what} | {a:.2f} ms | {b:.2f} ms | {a - b:+.2f} ms | <= +{goal:g} ms | "
                     f"{judged(a - b, goal, at_least=False)} |")

    tools = results.get("tools")
    if tools:
        ab = (tools[OURS]["ab"], tools[BASE]["ab"])
        ratio("new connections at c=50 (ab), rate", ab[0]["req_per_s"], ab[1]["req_per_s"],
              "req/s", 0.9)
        plus("new connections at c=50 (ab), median", ab[0]["p50_ms"], ab[1]["p50_ms"], 2)
    ratio("bulk download", ours["mb_per_s"], base["mb_per_s"], "MB/s", 0.95)
    ratio("bulk upload", ours["upload_mb_per_s"], base["upload_mb_per_s"], "MB/s", 0.95)
    plus("p50 of a new connection at c=1 (our client)", ours["p50_new_ms"], base["p50_new_ms"],
         0.5)
    if tools:
        ratio("keep-alive at c=50 (wrk), rate", tools[OURS]["wrk"]["req_per_s"],
              tools[BASE]["wrk"]["req_per_s"], "req/s", 1.0)
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
    ab_cpu = results.get("tools", {}).get(OURS, {}).get("ab", {}).get("forwarder_cpu_percent")
    if ab_cpu is not None:
        lines.append(f"| forwarder under `ab -c50` (its worker and ssh processes) | {ab_cpu}% "
                     f"CPU | |")
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
