"""The mutation check (`make mutation`, `make mutation MODULE=<target>`): cosmic-ray mutates the
modules whose bugs cost users most, one mutant at a time, and runs each target's fast tests
against every mutant. A mutant the tests do not notice *survives*; each survivor is either
killed by a new test or listed in targets.toml as equivalent, with the reason.

Runs in a scratch copy of the working tree (cosmic-ray edits the module on disk while a mutant
is tested; the clone is shared with other people's test runs), with the interpreter it was
started with (the mutation environment: requirements/dev.lock + requirements/mutation.lock).
Exits 1 when a mutant survives that targets.toml does not explain. See docs/measurements.md,
"Mutation check".
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TARGETS = Path(__file__).with_name("targets.toml")


@dataclass
class Target:
    name: str
    module: str
    tests: list[str]
    functions: list[str] = field(default_factory=list)  # empty: the whole module
    timeout: float = 120.0
    equivalent: list[dict[str, str]] = field(default_factory=list)


def load_targets() -> tuple[dict[str, Any], list[Target]]:
    data = tomllib.loads(TARGETS.read_text())
    defaults = data.get("defaults", {})
    targets = []
    for t in data["target"]:
        targets.append(Target(name=t["name"], module=t["module"], tests=list(t["tests"]),
                              functions=list(t.get("functions", [])), timeout=float(t.get("timeout", defaults.get("timeout", 120))),
                              equivalent=list(t.get("equivalent", []))))
    return defaults, targets


def scratch_copy(dest: Path) -> None:
    """The working tree as it is now (tracked and untracked files git does not ignore)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted but still tracked, or a submodule
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def function_lines(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """Line ranges of the named functions (`name` or `Class.name`), decorators included."""
    tree = ast.parse(path.read_text())
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found[prefix + child.name] = (start, child.end_lineno or child.lineno)
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path}: no function {', '.join(missing)} (targets.toml is out of date)")
    return [found[n] for n in names]


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's annotations are: with `from __future__ import annotations` they are
    never evaluated, so a mutant inside one (`Version | None` -> `Version - None`) changes nothing."""
    source = path.read_text()
    if "from __future__ import annotations" not in source:
        return []
    spans = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            found.append(node.annotation)
        spans += [((a.lineno, a.col_offset), (a.end_lineno or a.lineno, a.end_col_offset or 0)) for a in found if a is not None]
    return spans


def source_line(path: Path, line: int) -> str:
    return path.read_text().splitlines()[line - 1].strip()


def mutated_line(diff: str) -> str:
    """The mutant's line, as the diff shows it."""
    return next((line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")), "")


def explained(target: Target, diff: str) -> dict[str, str] | None:
    """The targets.toml entry naming this mutant (by its mutated line, whitespace aside)."""
    squeeze = lambda text: re.sub(r"\s+", "", text)  # noqa: E731
    mutant = squeeze(mutated_line(diff))
    return next((eq for eq in target.equivalent if squeeze(eq["mutant"]) == mutant), None)


def run_target(target: Target, work: Path, defaults: dict[str, Any], pytest_python: str,
               lines: set[int] | None = None) -> dict[str, Any]:
    from cosmic_ray.commands.init import init
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.testing import run_tests
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    os.chdir(work)
    module = Path(target.module)
    command = " ".join([shlex.quote(pytest_python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        f"--timeout={int(target.timeout)}", "-o", "addopts=--import-mode=importlib --strict-markers",
                        *map(shlex.quote, target.tests)])
    started = time.monotonic()
    outcome, output = run_tests(command, target.timeout)
    baseline_s = time.monotonic() - started
    if outcome != TestOutcome.SURVIVED:
        print(output[-3000:])
        raise SystemExit(f"[{target.name}] the tests fail without a mutation: {command}")
    print(f"[{target.name}] baseline passed in {baseline_s:.1f}s: {command}", flush=True)

    session = work / f"{target.name}.sqlite"
    ranges = function_lines(module, target.functions) if target.functions else None
    annotations = annotation_spans(module)
    excluded = list(defaults.get("exclude-operators", []))
    counts = {"mutants": 0, "killed": 0, "timeout": 0, "survived": 0, "equivalent": 0, "incompetent": 0}
    survivors: list[tuple[str, int, str, str]] = []
    equivalents: list[tuple[str, int, str, str]] = []
    with use_db(str(session), WorkDB.Mode.create) as db:
        init([module], db, {})
        skip = re.compile("|".join(f"(?:{e})" for e in excluded)) if excluded else None
        chosen = []
        for item in db.work_items:
            m = item.mutations[0]
            inside = ranges is None or any(lo <= m.start_pos[0] <= hi for lo, hi in ranges)
            inside = inside and (not lines or m.start_pos[0] in lines)
            annotation = any(lo <= tuple(m.start_pos) < hi for lo, hi in annotations)
            if not inside or annotation or (skip and skip.search(m.operator_name)):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="filtered"))
            else:
                chosen.append(item)
        print(f"[{target.name}] {len(chosen)} mutants to test", flush=True)
        for n, item in enumerate(chosen, 1):
            m = item.mutations[0]
            result = mutate_and_test(item.mutations, command, target.timeout)
            db.set_result(item.job_id, result)
            counts["mutants"] += 1
            line_text = source_line(module, m.start_pos[0])
            where = f"{target.module}:{m.start_pos[0]} {m.operator_name.removeprefix('core/')}"
            if result.worker_outcome != WorkerOutcome.NORMAL:
                if result.worker_outcome == WorkerOutcome.NO_TEST:
                    counts["mutants"] -= 1
                    continue
                counts["incompetent"] += 1
                verdict = f"incompetent ({result.worker_outcome})"
            elif result.test_outcome == TestOutcome.KILLED:
                if result.output == "timeout":
                    counts["timeout"] += 1
                    verdict = "timeout"
                else:
                    counts["killed"] += 1
                    verdict = "killed"
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
                verdict = "incompetent"
            elif eq := explained(target, result.diff or ""):
                counts["equivalent"] += 1
                equivalents.append((where, m.start_pos[0], eq["why"], result.diff or ""))
                verdict = "survived: equivalent"
            else:
                counts["survived"] += 1
                survivors.append((where, m.start_pos[0], line_text, result.diff or ""))
                verdict = "SURVIVED"
            print(f"[{target.name}] {n}/{len(chosen)} {where} ({m.definition_name}): {verdict}", flush=True)
    counts["seconds"] = round(time.monotonic() - started)
    return {"counts": counts, "survivors": survivors, "equivalents": equivalents}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", default=[],
                        help="a target's name (targets.toml), or a part of its module path; repeatable; default all")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy and its session databases")
    parser.add_argument("--line", type=int, action="append", default=[],
                        help="only the mutants on this line of the target's module (to check a new test against a survivor)")
    args = parser.parse_args()
    defaults, targets = load_targets()
    if args.list:
        for t in targets:
            print(f"{t.name:24} {t.module} {' '.join(t.functions)}")
        return 0
    if args.module:
        targets = [t for t in targets if any(sel == t.name or sel in t.module for sel in args.module)]
        if not targets:
            raise SystemExit(f"no target matches {args.module}; see --list")

    work = Path(tempfile.mkdtemp(prefix=f"tunerag-mutation-{uuid.uuid4().hex[:6]}-"))
    scratch_copy(work)
    os.environ["PYTHONPATH"] = os.pathsep.join(str(work / p) for p in ("operator/src", "workloads/src", "tests"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"scratch copy: {work}", flush=True)
    started = time.monotonic()
    reports = {}
    try:
        for t in targets:
            reports[t.name] = run_target(t, work, defaults, sys.executable, set(args.line))
    finally:
        os.chdir(ROOT)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    unexplained = 0
    print("\n== mutation check ==")
    print(f"{'target':24} {'mutants':>7} {'killed':>6} {'timeout':>7} {'equiv.':>6} {'survived':>8} {'incomp.':>7} {'time':>6}")
    for name, r in reports.items():
        c = r["counts"]
        print(f"{name:24} {c['mutants']:>7} {c['killed']:>6} {c['timeout']:>7} {c['equivalent']:>6} {c['survived']:>8} "
              f"{c['incompetent']:>7} {c['seconds']:>5}s")
    for r in reports.values():
        for where, _line, why, _diff in r["equivalents"]:
            print(f"\nequivalent  {where}: {why}")
        for where, _line, text, diff in r["survivors"]:
            unexplained += 1
            print(f"\nSURVIVED    {where}: {text}\n{diff}")
    print(f"\n{unexplained} unexplained survivor(s); {round(time.monotonic() - started)}s in all")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
