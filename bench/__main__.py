"""python -m bench: run every benchmark, print one table, write the figures as JSON."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from . import scenarios
from localbatch.node.engines import docker_unavailable_reason

from .emulator import REPOSITORY_ROOT, EmulatorProcess

DEFAULT_OUTPUT = REPOSITORY_ROOT / "bench" / "results.json"


def run_all() -> dict:
    results: dict = {}
    with EmulatorProcess() as emulator:
        results["task_throughput"] = scenarios.task_throughput(emulator)
    with EmulatorProcess() as emulator:
        results["submission"] = scenarios.submission_throughput(emulator)
    with EmulatorProcess() as emulator:
        results["api_latency"] = scenarios.api_latency(emulator)
    with EmulatorProcess() as emulator:
        results["memory_and_disk"] = scenarios.memory_and_disk(emulator)
    results["sample_wall_time"] = scenarios.sample_wall_time()
    if docker_unavailable_reason() is None:  # sample 4's nodes run Docker engines
        results["sample4_wall_time"] = scenarios.sample_wall_time("sample4_docker_swarm.py")
    return results


def table_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) for every figure with a target."""
    throughput, submission = results["task_throughput"], results["submission"]
    latency, memory, sample = results["api_latency"], results["memory_and_disk"], results["sample_wall_time"]

    def row(name: str, value: float, unit: str, target: str, met: bool, digits: int = 1) -> tuple[str, str, str, str]:
        verdict = ("met" if met else "MISSED") if target else ""
        return name, f"{value:,.{digits}f} {unit}".strip(), target, verdict

    return [
        row("1. task throughput via localbatch", throughput["emulator_tasks_per_second"], "tasks/s", "", True),
        row("   same processes spawned directly", throughput["direct_tasks_per_second"], "tasks/s", "", True),
        row("   ratio localbatch / direct", throughput["ratio"], "", ">= 0.5", throughput["ratio"] >= 0.5, digits=2),
        row("2. submission, sync create_tasks", submission["sync_tasks_per_second"], "tasks/s", "", True),
        row("   submission, aio create_tasks x8", submission["async_tasks_per_second"], "tasks/s", "", True),
        row("   faster of the two", submission["best_tasks_per_second"], "tasks/s", ">= 3,000",
            submission["best_tasks_per_second"] >= 3000),
        row("3. get_task p50 (8 clients)", latency["p50_ms"], "ms", "", True),
        row("   get_task p99 (8 clients)", latency["p99_ms"], "ms", "<= 20 ms", latency["p99_ms"] <= 20),
        row("   get_task service time p50 / p99", latency["service_p50_ms"], f"/ {latency['service_p99_ms']:.1f} ms",
            "", True),
        row("4. sample1 warm", sample["warm_seconds"], "s", "<= 3 s", sample["warm_seconds"] <= 3),
        row("   sample1 cold (starts the stack)", sample["cold_seconds"], "s", "<= 8 s", sample["cold_seconds"] <= 8),
        *([row("   sample4 warm / cold (2-node swarm)", results["sample4_wall_time"]["warm_seconds"],
               f"/ {results['sample4_wall_time']['cold_seconds']:.1f} s", "", True)]
          if "sample4_wall_time" in results else []),
        row("5. REST calls while waiting (list_tasks)", throughput["wait_list_tasks_calls"], "calls",
            f"<= polls ({throughput['wait_polls_upper_bound']}) + pages",
            throughput["wait_all_calls"] == throughput["wait_list_tasks_calls"]
            and throughput["wait_list_tasks_calls"] <= throughput["wait_polls_upper_bound"] * 3),
        row("6. emulator peak RSS after 10,000 tasks", memory["peak_rss_mb"], "MiB", "<= 150 MiB",
            memory["peak_rss_mb"] <= 150),
        row("   state size after 10,000 tasks", memory["state_mb"], "MiB", "", True),
    ]


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in rows + [("figure", "measured", "target", "")]) for i in range(4)]
    header = ("figure", "measured", "target", "")
    for line in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON figures")
    arguments = parser.parse_args(argv)
    began = time.monotonic()
    results = run_all()
    rows = table_rows(results)
    print_table(rows)
    document = {"machine": {"python": platform.python_version(), "platform": platform.platform()},
                "duration_seconds": time.monotonic() - began, "results": results,
                "targets": [{"figure": r[0].strip(), "measured": r[1], "target": r[2], "verdict": r[3]}
                            for r in rows if r[2]]}
    arguments.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nFigures written to {arguments.output} ({document['duration_seconds']:.0f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
