"""How a run spreads over a cluster: its jobs, their runtime resources and dependencies (from Snakemake's own dry
run: a job depends on the jobs that write its input files), and the wall time it needs on a given number of CPU
nodes and GPUs.

``python -m cellresdm.plan [SNAKEMAKE ARGS]`` (e.g. ``--configfile configs/cpg0000.yaml``) prints the jobs per rule,
the critical path (the longest chain of dependent jobs, every job taking its ``runtime`` resource) and the
makespan of a list schedule on ``--nodes`` CPU nodes and ``--gpus`` GPUs (a job with a ``gpu`` resource takes a
GPU, every other job one node), so two revisions or configs can be compared before a cluster is booked.
"""

from __future__ import annotations

import argparse
import heapq
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

_JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", re.M)


@dataclass(frozen=True)
class Job:
    """One job of a dry run: its rule, wildcards, resources (``runtime`` in minutes) and files."""

    rule: str
    wildcards: tuple[tuple[str, str], ...]
    resources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    inputs: tuple[str, ...] = field(default=(), compare=False, hash=False)
    outputs: tuple[str, ...] = field(default=(), compare=False, hash=False)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.rule, self.wildcards

    @property
    def minutes(self) -> float:
        return float(self.resources.get("runtime", 0) or 0)

    @property
    def uses_gpu(self) -> bool:
        return int(float(self.resources.get("gpu", 0) or 0)) > 0

    def wildcard(self, name: str) -> str:
        return dict(self.wildcards)[name]


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    items = [item.split("=", 1) for item in re.split(r",\s*", text) if "=" in item]
    return tuple(sorted((k.strip(), v.strip()) for k, v in items))


def parse_dry_run(output: str) -> list[Job]:
    """The jobs of ``snakemake -n`` output (rule, wildcards, resources, input and output files), in order."""
    jobs = []
    for rule, body in _JOB.findall(output):
        lines = dict(line.strip().split(": ", 1) for line in body.splitlines() if ": " in line)
        files = {k: tuple(f.strip() for f in lines.get(k, "").split(",") if f.strip()) for k in ("input", "output")}
        jobs.append(
            Job(
                rule,
                _pairs(lines.get("wildcards", "")),
                dict(_pairs(lines.get("resources", ""))),
                files["input"],
                files["output"],
            )
        )
    return jobs


def dependencies(jobs: Sequence[Job]) -> list[tuple[Job, Job]]:
    """(before, after) pairs: ``after`` reads a file that ``before`` writes."""
    writer = {path: job for job in jobs for path in job.outputs}
    return [(writer[path], job) for job in jobs for path in job.inputs if path in writer]


@dataclass(frozen=True)
class Plan:
    """A run's jobs per rule, critical path and makespan on a cluster (minutes)."""

    jobs_per_rule: dict[str, int]
    critical_path_minutes: float
    critical_path: list[str]
    makespan_minutes: float
    nodes: int
    gpus: int

    def lines(self) -> list[str]:
        out = [f"{rule:24s} {count:6d}" for rule, count in self.jobs_per_rule.items()]
        out.append(f"{'total':24s} {sum(self.jobs_per_rule.values()):6d}")
        out.append(f"critical path: {self.critical_path_minutes / 60:.1f} h ({' -> '.join(self.critical_path)})")
        out.append(f"makespan on {self.nodes} CPU nodes + {self.gpus} GPUs: {self.makespan_minutes / 60:.1f} h")
        return out


def plan(
    jobs: Sequence[Job],
    edges: Sequence[tuple[Job, Job]],
    nodes: int,
    gpus: int,
    minutes: Callable[[Job], float] | None = None,
) -> Plan:
    """Critical path and list-schedule makespan of ``jobs`` whose ``edges`` (before, after) order them, on
    ``nodes`` CPU nodes (one job each) and ``gpus`` GPUs (GPU jobs); each job takes ``minutes(job)`` (default: its
    ``runtime`` resource, an upper bound).

    The schedule starts ready jobs longest-remaining-path first, the usual heuristic for a DAG on identical
    machines; the makespan is therefore an estimate, at least the critical path and the work per resource.
    """
    duration = [float((minutes or (lambda job: job.minutes))(job)) for job in jobs]
    index = {job.key: i for i, job in enumerate(jobs)}
    after: list[list[int]] = [[] for _ in jobs]
    waiting = [0] * len(jobs)
    for before, later in edges:
        if before.key in index and later.key in index:
            after[index[before.key]].append(index[later.key])
            waiting[index[later.key]] += 1
    order = _topological(after, waiting)
    tail = [0.0] * len(jobs)  # longest path from a job's start to the end of the run
    successor = [-1] * len(jobs)
    for i in reversed(order):
        best = max(after[i], key=lambda j: tail[j], default=-1)
        tail[i] = duration[i] + (tail[best] if best >= 0 else 0.0)
        successor[i] = best
    start = max(range(len(jobs)), key=lambda i: tail[i] if waiting[i] == 0 else -1.0, default=-1)
    path = []
    while start >= 0:
        path.append(jobs[start].rule)
        start = successor[start]
    return Plan(
        dict(Counter(job.rule for job in jobs)),
        max(tail, default=0.0),
        path,
        _makespan(jobs, duration, after, waiting, tail, nodes, gpus),
        nodes,
        gpus,
    )


def _topological(after: list[list[int]], waiting: list[int]) -> list[int]:
    left = list(waiting)
    ready = [i for i, n in enumerate(left) if n == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in after[i]:
            left[j] -= 1
            if left[j] == 0:
                ready.append(j)
    if len(order) != len(after):
        raise ValueError("the job graph has a cycle")
    return order


def _makespan(
    jobs: Sequence[Job],
    duration: Sequence[float],
    after: list[list[int]],
    waiting: list[int],
    tail: list[float],
    nodes: int,
    gpus: int,
) -> float:
    left = list(waiting)
    free = {False: nodes, True: gpus}
    ready: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    for i, n in enumerate(left):
        if n == 0:
            heapq.heappush(ready[jobs[i].uses_gpu], (-tail[i], i))
    running: list[tuple[float, int]] = []
    now = 0.0
    while ready[False] or ready[True] or running:
        for kind in (False, True):
            while free[kind] > 0 and ready[kind]:
                _, i = heapq.heappop(ready[kind])
                free[kind] -= 1
                heapq.heappush(running, (now + duration[i], i))
        if not running:
            raise ValueError(f"jobs need a resource this cluster lacks ({nodes} nodes, {gpus} GPUs)")
        now, i = heapq.heappop(running)
        free[jobs[i].uses_gpu] += 1
        for j in after[i]:
            left[j] -= 1
            if left[j] == 0:
                heapq.heappush(ready[jobs[j].uses_gpu], (-tail[j], j))
    return now


def snakemake_plan(
    args: Sequence[str], nodes: int, gpus: int, snakemake: str = "snakemake", cwd: str | None = None
) -> tuple[Plan, list[Job]]:
    """Dry run of ``snakemake ARGS --forceall`` (every job, as on a fresh results folder) and its plan."""
    dry = subprocess.run([snakemake, *args, "--forceall", "-n"], capture_output=True, text=True, cwd=cwd, check=True)
    jobs = [job for job in parse_dry_run(dry.stdout + dry.stderr) if job.rule != "all"]
    return plan(jobs, dependencies(jobs), nodes, gpus), jobs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cellresdm.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64, help="CPU nodes (one job each; default 64)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs (one GPU job each; default 8)")
    parser.add_argument("--snakemake", default="snakemake", help="the snakemake executable")
    args, rest = parser.parse_known_args(argv)
    result, _ = snakemake_plan(rest, args.nodes, args.gpus, args.snakemake)
    print("\n".join(result.lines()))


if __name__ == "__main__":
    main(sys.argv[1:])
