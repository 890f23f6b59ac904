"""Mutation testing of the modules whose numbers matter most (issue #16, item 5); `make mutate`.

Each module is mutated by mutmut against the tests of its own folder. A run works in a scratch copy of the
working tree (``--work``, default ``runs/mutation/<module>``), so mutmut's ``mutants/`` folder never lands in
the repository; the shared mutmut settings come from ``[tool.mutmut]`` of pyproject.toml, the module and its
tests from ``MODULES`` below. Killed = killed + timeout (a mutant that makes a test hang is caught);
"no tests" mutants (code no selected test executes) count as survivors. mutmut skips decorated functions:
``@torch.no_grad()`` is rewritten to a ``with`` block in the scratch copy first (:func:`undecorate_no_grad`).

usage: python tools/mutate.py [MODULE ...] [--report PATH] [--work DIR] [--jobs N]
       (MODULE: a key of MODULES; default all, in the order below)
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (files to mutate (globs), test files that exercise them, all inside the module's own test folder)
MODULES = {
    "core.losses": (["core/losses.py"], ["tests/core/test_losses.py"]),
    "core.optim": (["core/optim/*"], ["tests/core/test_optim.py"]),
    "core.eval": (["core/eval/*"], ["tests/core/test_eval.py", "tests/core/test_finetune.py"]),
    "unigrad": (["papers/unigrad/unigrad_lib/grads.py"], ["tests/unigrad/test_unigrad_grads.py"]),
    "rdm": (["papers/rdm/rdm_lib/losses.py", "papers/rdm/rdm_lib/predictor.py"],
            ["tests/rdm/test_rdm_predictor.py", "tests/rdm/test_rdm_models.py"]),
    "align_uniform": (["papers/align_uniform/au_lib/losses.py"], ["tests/align_uniform/test_au_losses.py"]),
    "twist": (["papers/twist/twist_lib/loss.py", "papers/twist/twist_lib/head.py"],
              ["tests/twist/test_twist_loss.py", "tests/twist/test_twist_loss_surface.py",
               "tests/twist/test_twist_model.py"]),
    "checkpoint_convert": (["tools/checkpoint_convert.py"], ["tests/selfsup_det/test_sdet_convert.py"]),
}
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
SKIP = {".venv", ".git", "mutants", "runs", "demo_out", "__pycache__", ".pytest_cache", ".whl", ".gl"}


def scratch_copy(dst: str) -> None:
    """Copy the working tree (sources, tests, configs; no venv, git or outputs) to ``dst``."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(ROOT, dst, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".pyc")])
    venv = os.path.join(ROOT, ".venv")
    if os.path.isdir(venv):
        os.symlink(venv, os.path.join(dst, ".venv"))


def relocate_paper(work: str, only: list) -> tuple:
    """Paper packages are imported as ``<x>_lib`` (registered by path), while mutmut names a mutant after its
    file path from the project root with a leading ``src.`` dropped. So in the scratch copy the paper folder
    moves to ``src/`` (``papers/<paper>`` becomes a link to it, copied by value into mutants/) and the tests'
    paper lookup points there. Returns the rewritten ``only`` globs and the extra mutmut settings."""
    paper = only[0].split("/")[1]
    os.rename(os.path.join(work, "papers", paper), os.path.join(work, "src"))
    os.symlink(os.path.join("..", "src"), os.path.join(work, "papers", paper))
    lookup = {os.path.join("core", "paper_import.py"): ('return os.path.join(REPO, "papers", paper, *rel)',
                                                        f'return os.path.join(REPO, "src", *rel) if paper == '
                                                        f'"{paper}" else os.path.join(REPO, "papers", paper, *rel)'),
              os.path.join("tests", "twist", "conftest.py"): ('"..", "..", "papers", "twist"', '"..", "..", "src"')}
    for rel, (a, b) in lookup.items():
        path = os.path.join(work, rel)
        if os.path.isfile(path) and (paper == "twist" or rel.endswith("paper_import.py")):
            text = open(path).read()
            if a not in text:
                raise SystemExit(f"error: tools/mutate.py cannot redirect the paper lookup in {rel}")
            open(path, "w").write(text.replace(a, b))
    moved = ["src/" + g.split("/", 2)[2] for g in only]
    return moved, {"source_paths": ["core", "tools", "src"], "also_copy": ["papers"]}


def undecorate_no_grad(path: str) -> None:
    """mutmut 3 leaves decorated functions alone; ``@torch.no_grad()`` (most of the gradient forms, kNN, LARS'
    step) becomes ``with torch.no_grad():`` around the body in the scratch copy, the same behaviour, so those
    functions are mutated too."""
    import libcst as cst

    class Rewrite(cst.CSTTransformer):
        def leave_FunctionDef(self, original, node):
            keep = [d for d in node.decorators if cst.Module([]).code_for_node(d.decorator) != "torch.no_grad()"]
            if len(keep) == len(node.decorators):
                return node
            block = cst.With(items=[cst.WithItem(cst.parse_expression("torch.no_grad()"))], body=node.body)
            return node.with_changes(decorators=keep, body=cst.IndentedBlock([block]))

    text = open(path).read()
    new = cst.parse_module(text).visit(Rewrite()).code
    if new != text:
        open(path, "w").write(new)


def module_config(pyproject: str, only: list, tests: list, extra: dict = None) -> None:
    """Add this module's ``only_mutate``, test selection (and ``extra`` settings, which replace the shared
    ones) to the copy's ``[tool.mutmut]`` section."""
    text = open(pyproject).read()
    if "[tool.mutmut]" not in text:
        text += "\n[tool.mutmut]\n"
    for key in extra or {}:
        text = re.sub(rf"^{key} = .*\n", "", text, flags=re.M)
    settings = {"only_mutate": only, "pytest_add_cli_args_test_selection": tests, **(extra or {})}
    lines = "".join(f"{k} = {v!r}\n" for k, v in settings.items()).replace("'", '"')
    text = text.replace("[tool.mutmut]\n", "[tool.mutmut]\n" + lines, 1)
    open(pyproject, "w").write(text)


def run_module(name: str, work: str, jobs: int) -> dict:
    """Mutate one module in its scratch copy; return counts, survivors and the time taken."""
    only, tests = MODULES[name]
    scratch_copy(work)
    extra = None
    if only[0].startswith("papers/"):
        only, extra = relocate_paper(work, only)
    module_config(os.path.join(work, "pyproject.toml"), only, tests, extra)
    import glob

    for pattern in only:
        for path in glob.glob(os.path.join(work, pattern)):
            if path.endswith(".py"):
                undecorate_no_grad(path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    mutmut = os.path.join(os.path.dirname(sys.executable), "mutmut")
    start = time.time()
    run = subprocess.run([mutmut, "run", "--max-children", str(jobs)], cwd=work, env=env,
                         capture_output=True, text=True)
    secs = time.time() - start
    with open(os.path.join(work, "mutmut_run.log"), "w") as f:
        f.write(run.stdout + run.stderr)
    res = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True)
    status = dict(re.findall(r"^\s*(\S+): (.+)$", res.stdout, flags=re.M))
    if run.returncode != 0 or not status:
        raise SystemExit(f"error: mutmut failed on {name} (log: {work}/mutmut_run.log)")
    survivors = sorted(k for k, v in status.items() if v not in KILLED)
    return {"name": name, "total": len(status), "killed": len(status) - len(survivors), "seconds": secs,
            "survivors": [(k, status[k]) for k in survivors], "work": work}


def diff_of(work: str, mutant: str) -> str:
    mutmut = os.path.join(os.path.dirname(sys.executable), "mutmut")
    out = subprocess.run([mutmut, "show", mutant], cwd=work, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines()[1:] if line.startswith(("+", "-"))
                     and not line.startswith(("+++", "---")))


def write_report(results: list, path: str) -> None:
    rows = ["| module | mutants | killed | kill rate | time |", "|---|---|---|---|---|"]
    for r in results:
        rate = 100.0 * r["killed"] / max(1, r["total"])
        rows.append(f"| {r['name']} | {r['total']} | {r['killed']} | {rate:.1f} % | {r['seconds'] / 60:.1f} min |")
    parts = ["# Mutation report (tools/mutate.py)", "", *rows, ""]
    for r in results:
        parts.append(f"## {r['name']}: {len(r['survivors'])} not killed")
        for k, st in r["survivors"]:
            parts += [f"- `{k}` ({st})", "```diff", diff_of(r["work"], k), "```"]
        parts.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    open(path, "w").write("\n".join(parts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    p.add_argument("--report", default=os.path.join(ROOT, "runs", "mutation", "report.md"))
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "mutation"))
    p.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel (mutmut --max-children)")
    a = p.parse_args(argv)
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        print(f"error: unknown module {unknown[0]!r}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    results, failed = [], []
    for name in a.modules or list(MODULES):
        try:
            r = run_module(name, os.path.join(a.work, name), a.jobs)
        except SystemExit as e:  # one module's failure does not stop the others
            print(e, file=sys.stderr, flush=True)
            failed.append(name)
            continue
        results.append(r)
        print(f"{name}: {r['killed']}/{r['total']} killed ({r['seconds']:.0f} s)", flush=True)
        write_report(results, a.report)
    print(f"report: {a.report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
