"""The GPU check: everything CUDA-only the pack has, measured and checked in ONE device call.

    bash scripts/gpu_check.sh              # on the device machine (carry [".gpu-bundle"]); writes $OUT
    bash scripts/gpu_check.sh --dry-run    # here, on the CPU: everything but the GPU itself

Why one script: a device call is scarce (minutes, paid for starting), has no network and brings back at
most 8 files. So the call installs only from the bundle (scripts/gpu_bundle.sh), runs each part under its
own time budget, keeps going after a failed part, and writes a few files:
  $OUT/summary.md        one screen: each part passed/failed, the benchmark goals, the VRAM comparison
  $OUT/results.json      the same, machine-readable (parts, pytest counts, bench JSON inlined)
  $OUT/logs.txt          the tail of each part's output (what to read when a part failed)
  $OUT/bench_gpu.md, $OUT/bench_memory.md   the benchmarks' full tables
Parts (budget in seconds, shrunk so that the whole stays within --budget):
  install           unpack the bundle into a --target folder that goes first on PYTHONPATH (so its
                    transformers 5.23 wins over the image's 5.17), unpack ComfyUI 0.33.0, check the imports
  cuda-tests        pytest -m cuda tests/test_cuda.py (in-process ComfyUI on the GPU)
  server-workflows  pytest tests/integration/test_gpu_server.py: every example workflow in a real ComfyUI
                    0.33.0 server on the GPU, dynamic VRAM / --disable-dynamic-vram / --lowvram + fp8
  bench-gpu         bench/bench_gpu.py at GLM-Image's sizes (random weights; AR cut to --ar-layers)
  bench-memory      bench/bench_memory.py's GPU part: peak VRAM per option next to the card-table estimates
Exit status: 0 only when every part passed. In the dry run the same parts run on the CPU with the tiny
models (cuda tests with GLMIMAGE_CUDA_TESTS_ON_CPU=1, benches with --tiny), in a Python rebuilt from the
device image's package list (scripts/gpu/dry_image.py) + the bundle; its figures are marked dry run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu-bundle"
WHEEL_LIST = REPO / "scripts" / "gpu" / "bundle_wheels.txt"
DRY = REPO / ".cache" / "gpu-dry"
#: Seconds per part on the device; the dry run (2 CPU cores, tiny models) gets DRY_BUDGETS.
BUDGETS = {"install": 40, "cuda-tests": 110, "server-workflows": 130, "bench-gpu": 170, "bench-memory": 80}
DRY_BUDGETS = {"install": 120, "cuda-tests": 900, "server-workflows": 900, "bench-gpu": 600, "bench-memory": 600}
PART_NAMES = list(BUDGETS)
#: Modules the install part imports, and the versions that must win (the bundle over the image).
MUST_IMPORT = ["torch", "transformers", "diffusers", "safetensors", "av", "comfy_aimdo", "comfy_kitchen",
               "torchsde", "sqlalchemy", "pydantic", "pydantic_core", "glmimage_core", "glmimage_core.demo.decoder"]
LOG_TAIL = 12000  # characters of each part's output kept in logs.txt
NOT_ASKED = "not asked for (--parts)"


@dataclass
class PartResult:
    name: str
    status: str = "not run"  # passed / failed / timeout / not run
    seconds: float = 0.0
    budget: float = 0.0
    detail: str = ""
    log_tail: str = field(default="", repr=False)


# --------------------------------------------------------------------------- the bundle


def pinned_wheels(path: Path = WHEEL_LIST) -> list[tuple[str, str, str]]:
    """(name, version, kind) of every line of bundle_wheels.txt; a malformed line names itself."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or "==" not in parts[0] or parts[1] not in ("any", "abi3", "cp"):
            raise ValueError(f"{path}:{n}: want 'NAME==VERSION any|abi3|cp', got {line!r}")
        name, version = parts[0].split("==", 1)
        out.append((name, version, parts[1]))
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_bundle(bundle: Path = BUNDLE, wheel_list: Path = WHEEL_LIST, hashes: bool = True) -> list[str]:
    """What is wrong with the bundle (empty: complete): every pinned wheel in MANIFEST.txt, every cp wheel
    and both archives present with the recorded sha256."""
    manifest = bundle / "MANIFEST.txt"
    if not manifest.is_file():
        return [f"no {manifest}: run `bash scripts/gpu_bundle.sh` here first (and carry .gpu-bundle)"]
    problems = []
    entries = {}
    files = {}
    for line in manifest.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            entries[parts[0]] = parts[1:]
        elif len(parts) == 2:
            files[parts[0]] = parts[1]
    for name, version, kind in pinned_wheels(wheel_list):
        spec = f"{name}=={version}"
        if spec not in entries:
            problems.append(f"{spec} is pinned in {wheel_list.name} but not in the bundle: rerun gpu_bundle.sh")
            continue
        if kind == "cp":
            whl = bundle / "wheels" / entries[spec][1]
            if not whl.is_file():
                problems.append(f"{whl} is missing")
            elif hashes and sha256(whl) != entries[spec][2]:
                problems.append(f"{whl} does not have the sha256 MANIFEST.txt records")
    for name in ("site.tar.xz", "comfyui-0.33.0.tar.gz"):
        path = bundle / name
        if name not in files:
            problems.append(f"MANIFEST.txt records no {name}")
        elif not path.is_file():
            problems.append(f"{path} is missing")
        elif hashes and sha256(path) != files[name]:
            problems.append(f"{path} does not have the sha256 MANIFEST.txt records (copied partly?)")
    return problems


def dry_cp_wheels(dest: Path) -> list[Path]:
    """The cp311 twins of the bundle's cp wheels (the dry run's Python is 3.11), fetched once."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, version, kind in pinned_wheels():
        if kind != "cp":
            continue
        stem = f"{name.lower().replace('-', '_')}-{version}-"
        found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem)]
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "--implementation", "cp",
                            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                            "-d", str(dest), f"{name}=={version}"], check=True)
            found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem)]
        out += found
    return out


def install(work: Path, python: str, dry: bool) -> str:
    """Unpacks the bundle into work/site + work/comfyui-0.33.0; raises with what is wrong."""
    problems = check_bundle()
    if problems:
        raise RuntimeError("bundle incomplete:\n  " + "\n  ".join(problems))
    site, comfy = work / "site", work / "comfyui-0.33.0"
    for path in (site, comfy):
        shutil.rmtree(path, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(BUNDLE / "site.tar.xz") as tar:
        tar.extractall(work, filter="data")
    wheels = dry_cp_wheels(DRY / "wheels-cp311") if dry else sorted((BUNDLE / "wheels").glob("*.whl"))
    if wheels:
        done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--target", str(site), *map(str, wheels)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip install of the cp wheels failed:\n{done.stdout}{done.stderr}")
    comfy.mkdir()
    with tarfile.open(BUNDLE / "comfyui-0.33.0.tar.gz") as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if len(parts) > 1:
                m.name = str(Path(*parts[1:]))
                members.append(m)
        tar.extractall(comfy, members=members, filter="data")
    if not (comfy / "main.py").is_file():
        raise RuntimeError(f"{BUNDLE / 'comfyui-0.33.0.tar.gz'} holds no ComfyUI tree (no <top>/main.py)")
    return f"site {du(site) / 2**20:.0f} MiB, ComfyUI 0.33.0 unpacked"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


IMPORT_CHECK = """
import importlib, json, sys
out = {"python": sys.version.split()[0]}
for name in sys.argv[1].split(","):
    module = importlib.import_module(name)
    out[name] = [getattr(module, "__version__", "?"), getattr(module, "__file__", "?")]
import torch
out["cuda"] = torch.cuda.is_available()
out["gpu"] = torch.cuda.get_device_name() if out["cuda"] else None
print("IMPORTS " + json.dumps(out))
"""


def import_check(python: str, env: dict, site: Path) -> dict:
    """Imports MUST_IMPORT in the Python the other parts use; transformers must be the bundle's."""
    done = subprocess.run([python, "-c", IMPORT_CHECK, ",".join(MUST_IMPORT)], env=env, capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    line = next((x for x in done.stdout.splitlines() if x.startswith("IMPORTS ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"imports failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    found = json.loads(line[len("IMPORTS "):])
    want = dict((n, v) for n, v, _ in pinned_wheels())
    version, path = found["transformers"]
    if version != want["transformers"] or not path.startswith(str(site)):
        raise RuntimeError(f"transformers {version} from {path} won, not the bundle's {want['transformers']} "
                           f"from {site}: PYTHONPATH must put the bundle first")
    return found


# --------------------------------------------------------------------------- running parts


def run_command(cmd: list[str], env: dict, budget: float, log: Path) -> tuple[str, float, str]:
    """Runs cmd in its own session with a time budget; (status, seconds, output tail). On timeout the
    whole process group gets SIGTERM, then SIGKILL (servers the tests started included)."""
    start = time.monotonic()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
    text = log.read_text(errors="replace")
    return status, time.monotonic() - start, text[-LOG_TAIL:]


def pytest_counts(text: str) -> str:
    """'17 passed, 2 skipped' from pytest's last summary line ('' when there is none)."""
    found = re.findall(r"=+ (.*? in [\d.]+s.*?) =+", text) or re.findall(r"^(\d+ (?:passed|failed|error).*)$",
                                                                        text, re.M)
    return found[-1] if found else ""


def skipped_reasons(text: str) -> list[str]:
    return sorted(set(re.findall(r"^SKIPPED \[\d+\] (.*)$", text, re.M)))[:10]


def plan_budget(name: str, budgets: dict, started: float, total: float) -> float:
    """A part's budget, shrunk so that the whole check ends within `total` seconds of `started`."""
    left = total - (time.monotonic() - started)
    return max(0.0, min(budgets[name], left))


# --------------------------------------------------------------------------- report


def bench_detail(out: Path, part: str) -> str:
    """'goals met 3/6' (bench-gpu) or 'VRAM rows 7, flagged 1' (bench-memory), from the JSON they wrote."""
    path = out / ("bench_gpu.json" if part == "bench-gpu" else "bench_memory.json")
    if part not in ("bench-gpu", "bench-memory") or not path.is_file():
        return ""
    data = json.loads(path.read_text())
    if part == "bench-gpu":
        goals = data.get("goals", [])
        return f"goals met {sum(g['met'] for g in goals)}/{len(goals)}" + (" (dry run)" if data.get("tiny") else "")
    rows = [r for r in data.get("versus_estimates", []) if r.get("measured") is not None]
    if not rows:
        return "no GPU: estimates only"
    return f"VRAM rows measured {len(rows)}, off by > 15%: {sum(bool(r['flag']) for r in rows)}"


def summary_markdown(parts: list[PartResult], meta: dict, bench_gpu: dict | None, bench_memory: dict | None) -> str:
    """One screen: the parts, the benchmark goals, the VRAM comparison (marked dry run where so)."""
    dry = meta.get("dry_run")
    lines = [f"# GPU check {'(DRY RUN on the CPU: tiny models, no GPU figures)' if dry else ''}".rstrip(), "",
             f"{meta.get('gpu') or 'no GPU'} | python {meta.get('python', '?')} | torch {meta.get('torch', '?')} | "
             f"transformers {meta.get('transformers', '?')} | diffusers {meta.get('diffusers', '?')} | "
             f"{meta.get('total_seconds', 0):.0f} s", "",
             "| part | result | s (budget) | detail |", "|---|---|---|---|"]
    for p in parts:
        mark = {"passed": "passed", "failed": "FAILED", "timeout": "TIMEOUT", "not run": "not run"}[p.status]
        detail = p.detail.replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {p.name} | {mark} | {p.seconds:.0f} ({p.budget:.0f}) | {detail} |")
    if bench_gpu:
        lines += ["", "## Goals (bench_gpu.py" + (", dry run: tiny models, meaningless figures)" if dry else ")"),
                  "", "| goal | measured | met |", "|---|---|---|"]
        for g in bench_gpu.get("goals", []):
            lines.append(f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else 'NO'} |")
    if bench_memory:
        rows = bench_memory.get("versus_estimates") or []
        lines += ["", "## VRAM: measured peaks next to the README's card table (flag: off by > 15%)", ""]
        if not rows:
            lines.append("not measured in this run (no CUDA GPU): the card table's estimates stand unchecked")
        else:
            lines += ["| card | model | option | estimate GB | measured GB | ratio | flag |", "|---|---|---|---|---|---|---|"]
            for r in rows:
                if r.get("measured") is None:
                    lines.append(f"| {r['card_gb']} | {r['model']} | {r['option']} | - | - | - | {r.get('note', '')} |")
                else:
                    lines.append(f"| {r['card_gb']} | {r['model']} | {r['option']} | {r['estimate'] / 1e9:.1f} | "
                                 f"{r['measured'] / 1e9:.1f} | {r['ratio']:.2f} | {'FLAG' if r['flag'] else 'ok'} |")
    failed = [p.name for p in parts if p.status != "passed" and p.detail != NOT_ASKED]
    lines += ["", "ALL PARTS PASSED" if not failed else f"NOT PASSED: {', '.join(failed)} (see logs.txt)"]
    misses = unmet_goals(bench_gpu, bench_memory)
    if misses and not dry:
        lines.append(f"GOALS NOT MET: {'; '.join(misses)}")
    elif bench_gpu and not dry:
        lines.append("ALL GOALS MET, no VRAM estimate off by more than 15%")
    return "\n".join(lines) + "\n"


def unmet_goals(bench_gpu: dict | None, bench_memory: dict | None) -> list[str]:
    """The issue's goals bench_gpu.py did not meet, and the card-table estimates flagged off by > 15%."""
    out = [g["goal"] for g in (bench_gpu or {}).get("goals", []) if not g["met"]]
    out += [f"VRAM estimate {r['card_gb']} GB {r['model']} (x{r['ratio']:.2f})"
            for r in (bench_memory or {}).get("versus_estimates", []) if r.get("flag")]
    return out


def write_outputs(out: Path, parts: list[PartResult], meta: dict) -> str:
    """summary.md, results.json, logs.txt under `out` (+ the bench files the parts wrote there)."""
    out.mkdir(parents=True, exist_ok=True)
    bench = {}
    for name in ("bench_gpu", "bench_memory"):
        path = out / f"{name}.json"
        bench[name] = json.loads(path.read_text()) if path.is_file() else None
    text = summary_markdown(parts, meta, bench["bench_gpu"], bench["bench_memory"])
    (out / "summary.md").write_text(text)
    results = {"meta": meta, "parts": [{k: v for k, v in asdict(p).items() if k != "log_tail"} for p in parts],
               **bench}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    with open(out / "logs.txt", "w") as logs:
        for p in parts:
            logs.write(f"\n{'=' * 30} {p.name}: {p.status} ({p.seconds:.0f} s) {'=' * 30}\n{p.log_tail}\n")
    for name in ("bench_gpu", "bench_memory"):  # the JSON is inlined in results.json: keep the file count low
        (out / f"{name}.json").unlink(missing_ok=True)
    return text


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU here (also chosen without CUDA)")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help=f"comma list of {PART_NAMES}")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (device default 540: a device call may run 600)")
    parser.add_argument("--ar-layers", type=int, default=8, help="bench-gpu: AR layers of 40 (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="bench-gpu: decoder steps (default 20)")
    parser.add_argument("--ar-grid", type=int, default=8, help="bench-memory: AR tokens a side (default 8)")
    parser.add_argument("--python", default=None, help="the Python to run the parts with (default: python3 on "
                                                        "the device, the rebuilt device image in the dry run)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    import torch  # the image's; only to know whether there is a GPU

    dry = args.dry_run or not torch.cuda.is_available()
    budgets = DRY_BUDGETS if dry else BUDGETS
    total = args.budget or (sum(DRY_BUDGETS.values()) if dry else 540)
    out = Path(os.environ.get("OUT") or REPO / "gpu-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("GLMIMAGE_GPU_WORK") or (DRY / "work" if dry else "/tmp/glmimage-gpu")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.python:
        python = args.python
    elif dry:
        python = str(DRY / "venv" / "bin" / "python")
        if not Path(python).exists():
            subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "dry_image.py"), str(DRY)], check=True)
    else:
        python = sys.executable
    site, comfy = work / "site", work / "comfyui-0.33.0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "GLMIMAGE_COMFYUI_DIR": str(comfy),
           "GLMIMAGE_COMFY_DEVICE": "cpu" if dry else "gpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if dry:
        env["GLMIMAGE_CUDA_TESTS_ON_CPU"] = "1"
    env.pop("GLMIMAGE_MODELS_DIR", None)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(wanted) - set(PART_NAMES)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {PART_NAMES}")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    meta = {"dry_run": dry, "python_path": python, "out": str(out)}
    pytest_cmd = [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda"]
    commands = {
        "cuda-tests": pytest_cmd + ["tests/test_cuda.py"],
        "server-workflows": pytest_cmd + ["tests/integration/test_gpu_server.py"],
        "bench-gpu": [python, "bench/bench_gpu.py", "--out", str(out / "bench_gpu.json"), "--md",
                      str(out / "bench_gpu.md")] + (["--tiny"] if dry else
                                                     ["--ar-layers", str(args.ar_layers), "--steps", str(args.steps)]),
        "bench-memory": [python, "bench/bench_memory.py", "--out", str(out / "bench_memory.json"), "--md",
                         str(out / "bench_memory.md")] + (["--tiny"] if dry else ["--ar-grid", str(args.ar_grid), "--no-layer-cost"]),
    }
    parts = []
    installed = "install" not in wanted and (site / "transformers").is_dir()
    for name in PART_NAMES:
        result = PartResult(name)
        parts.append(result)
        if name not in wanted:
            result.detail = NOT_ASKED
            continue
        result.budget = plan_budget(name, budgets, started, total)
        if result.budget < 5:
            result.detail = "no time left in the check's budget"
            continue
        print(f"[gpu-check] {name} (budget {result.budget:.0f} s)", flush=True)
        if name == "install":
            t = time.monotonic()
            try:
                detail = install(work, python, dry)
                found = import_check(python, env, site)
                meta.update({k: found[k][0] for k in ("torch", "transformers", "diffusers")},
                            python=found["python"], gpu=found["gpu"], cuda=found["cuda"])
                result.status, result.detail = "passed", f"{detail}; imports ok, transformers {found['transformers'][0]}"
                installed = True
            except Exception as err:  # noqa: BLE001 - reported, and the later parts are told why they cannot run
                result.status, result.detail = "failed", str(err).splitlines()[0][:300]
                result.log_tail = str(err)[-LOG_TAIL:]
            result.seconds = time.monotonic() - t
            continue
        if not installed:
            result.detail = "install did not pass"
            continue
        result.status, result.seconds, result.log_tail = run_command(commands[name], env, result.budget,
                                                                     logs / f"{name}.log")
        counts = pytest_counts(result.log_tail) if "pytest" in commands[name] else ""
        skips = skipped_reasons(result.log_tail) if counts else []
        result.detail = "; ".join(x for x in [counts, *(f"skipped: {s}" for s in skips[:3])] if x) or \
            bench_detail(out, name) or (result.log_tail.strip().splitlines() or [""])[-1][:200]
        print(f"[gpu-check] {name}: {result.status} in {result.seconds:.0f} s {result.detail}", flush=True)
    meta["total_seconds"] = time.monotonic() - started
    print(write_outputs(out, parts, meta))
    print(f"[gpu-check] files in {out}: {sorted(p.name for p in out.iterdir())}")
    passed = all(p.status == "passed" for p in parts if p.name in wanted)
    results = json.loads((out / "results.json").read_text())
    goals = [] if dry else unmet_goals(results.get("bench_gpu"), results.get("bench_memory"))  # on a GPU: real
    return 0 if passed and not goals else 1


if __name__ == "__main__":
    sys.exit(main())
