"""The GPU check's cheap parts, on the CPU, so that the one prepared device call cannot rot between GPU runs.

What runs here (seconds): the pinned wheel list, the bundle's manifest check (on a bundle made here from
small files, and on the real .gpu-bundle when one was built), the report files, a part's time budget
(a command that overruns is killed), the server command without --cpu, the VRAM comparison's flag, and
the shell scripts' syntax. The full dry run (`bash scripts/gpu_check.sh --dry-run`) takes minutes: not here.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.comfy_harness import ComfyError, ComfyServer  # at import: a ComfyUI tree on sys.path has a 'tests' too

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


def test_pinned_wheels_are_well_formed_and_carry_the_packs_minimum_transformers():
    pins = {name: (version, kind) for name, version, kind in gpu_check.pinned_wheels()}
    assert pins["transformers"][0] == "5.23.0" and pins["diffusers"][0] == "0.42.1"
    requirements = (REPO / "requirements.txt").read_text()
    assert "transformers>=5.23.0" in requirements and "diffusers>=0.42.1" in requirements
    for needed in ("av", "comfy-aimdo", "comfy-kitchen", "torchsde", "sqlalchemy", "pydantic", "pydantic-core"):
        assert needed in pins, needed  # ComfyUI 0.33.0 does not start without them (found in the dry run)
    assert {kind for _, kind in pins.values()} <= {"any", "abi3", "cp"}


def test_a_malformed_pin_names_its_line(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("# comment\ntransformers==5.23.0 any\ndiffusers 0.42.1\n")
    with pytest.raises(ValueError, match=r"list.txt:3: want 'NAME==VERSION any\|abi3\|cp', got 'diffusers 0.42.1'"):
        gpu_check.pinned_wheels(bad)


def _fake_bundle(root: Path) -> tuple[Path, Path]:
    """A bundle of small files with a correct MANIFEST.txt, for a two-line pinned list."""
    bundle = root / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    pins = root / "pins.txt"
    pins.write_text("purepkg==1.0 any\nbinpkg==2.0 cp\n")
    lines = []
    for name, data in (("site.tar.xz", b"site"), ("comfyui-0.33.0.tar.gz", b"comfy")):
        (bundle / name).write_bytes(data)
    whl = "binpkg-2.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    (bundle / "wheels" / whl).write_bytes(b"wheel")
    lines.append(f"purepkg==1.0 any purepkg-1.0-py3-none-any.whl {hashlib.sha256(b'x').hexdigest()}")
    lines.append(f"binpkg==2.0 cp {whl} {hashlib.sha256(b'wheel').hexdigest()}")
    lines.append(f"comfyui-0.33.0.tar.gz {hashlib.sha256(b'comfy').hexdigest()}")
    lines.append(f"site.tar.xz {hashlib.sha256(b'site').hexdigest()}")
    (bundle / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    return bundle, pins


def test_bundle_check_accepts_a_complete_bundle_and_names_what_is_wrong(tmp_path):
    bundle, pins = _fake_bundle(tmp_path)
    assert gpu_check.check_bundle(bundle, pins) == []
    (bundle / "site.tar.xz").write_bytes(b"half")
    (bundle / "wheels" / "binpkg-2.0-cp312-cp312-manylinux_2_17_x86_64.whl").unlink()
    pins.write_text(pins.read_text() + "newpkg==3.0 any\n")
    problems = gpu_check.check_bundle(bundle, pins)
    assert any("site.tar.xz does not have the sha256" in p for p in problems), problems
    assert any("binpkg-2.0-cp312" in p and "missing" in p for p in problems), problems
    assert any(p.startswith("newpkg==3.0 is pinned") for p in problems), problems
    assert "run `bash scripts/gpu_bundle.sh`" in gpu_check.check_bundle(tmp_path / "none", pins)[0]


@pytest.mark.skipif(not (REPO / ".gpu-bundle" / "MANIFEST.txt").is_file(),
                    reason="no .gpu-bundle here (bash scripts/gpu_bundle.sh builds it: ~60 MB of wheels)")
def test_the_built_bundle_matches_the_pinned_list():
    assert gpu_check.check_bundle(hashes=False) == []


def test_reports_say_which_part_failed_and_show_goals_and_vram_flags(tmp_path):
    parts = [gpu_check.PartResult("install", "passed", 12, 45, "imports ok"),
             gpu_check.PartResult("cuda-tests", "failed", 80, 110, "1 failed, 16 passed", "E   assert 1 == 2"),
             gpu_check.PartResult("server-workflows", "timeout", 120, 120, ""),
             gpu_check.PartResult("bench-gpu", "passed", 150, 170, ""),
             gpu_check.PartResult("bench-memory", "not run", 0, 0, gpu_check.NOT_ASKED)]
    (tmp_path / "bench_gpu.json").write_text(json.dumps(
        {"goals": [{"goal": "AR batch 4 images/s vs batch 1", "value": "3.40x (goal >= 3x)", "met": True},
                   {"goal": "pack decode time vs diffusers", "value": "1.10x (goal <= 1.05x)", "met": False}]}))
    meta = {"dry_run": False, "gpu": "NVIDIA H200", "python": "3.12.3", "torch": "2.11.0", "total_seconds": 362}
    text = gpu_check.write_outputs(tmp_path, parts, meta)
    assert "| cuda-tests | FAILED | 80 (110) | 1 failed, 16 passed |" in text
    assert "| server-workflows | TIMEOUT |" in text
    assert "| pack decode time vs diffusers | 1.10x (goal <= 1.05x) | NO |" in text
    assert "NOT PASSED: cuda-tests, server-workflows (see logs.txt)" in text
    assert "GOALS NOT MET: pack decode time vs diffusers" in text
    assert "not measured in this run" not in text  # no bench_memory.json: no VRAM section at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.txt", "results.json", "summary.md"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [p["status"] for p in results["parts"]] == ["passed", "failed", "timeout", "passed", "not run"]
    assert "E   assert 1 == 2" in (tmp_path / "logs.txt").read_text()
    dry = gpu_check.summary_markdown(parts[:1], {"dry_run": True}, None, {"versus_estimates": []})
    assert "DRY RUN" in dry and "not measured in this run (no CUDA GPU)" in dry and "ALL PARTS PASSED" in dry
    assert "GOALS" not in dry  # a dry run's figures are meaningless: no goal verdicts


def test_a_part_over_its_budget_is_stopped_with_everything_it_started(tmp_path):
    marker = tmp_path / "child.pid"
    cmd = [sys.executable, "-c", "import subprocess, sys, time; "
           f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           f"open({str(marker)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"]
    t = time.monotonic()
    status, seconds, tail = gpu_check.run_command(cmd, {}, 2.0, tmp_path / "log.txt")
    assert status == "timeout" and seconds < 20 and time.monotonic() - t < 20 and "started" in tail
    pid = int(marker.read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the part's child {pid} survived the timeout")
    assert gpu_check.run_command([sys.executable, "-c", "print('ok')"], {}, 30, tmp_path / "l2.txt")[0] == "passed"


def test_budgets_shrink_to_the_time_left():
    started = time.monotonic() - 500
    assert gpu_check.plan_budget("bench-gpu", gpu_check.BUDGETS, started, 540) == pytest.approx(40, abs=1)
    assert gpu_check.plan_budget("install", gpu_check.BUDGETS, time.monotonic(), 540) == gpu_check.BUDGETS["install"]
    assert sum(gpu_check.BUDGETS.values()) <= 540  # a device call may run 600 s


def test_pytest_summary_and_skip_reasons_are_read_from_the_log():
    log = ("....s\nSKIPPED [2] tests/test_cuda.py:99: needs bitsandbytes\n"
           "=========== 15 passed, 2 skipped in 41.20s ===========\n")
    assert gpu_check.pytest_counts(log) == "15 passed, 2 skipped in 41.20s"
    assert gpu_check.skipped_reasons(log) == ["tests/test_cuda.py:99: needs bitsandbytes"]
    assert gpu_check.pytest_counts("17 passed in 3.2s\n") == "17 passed in 3.2s"


def test_server_command_has_cpu_only_for_the_cpu(tmp_path):

    comfy = tmp_path / "comfy"
    comfy.mkdir()
    (comfy / "main.py").write_text("")
    cpu = ComfyServer(tmp_path / "a", comfy_dir=comfy, link_pack=False).command(8188)
    gpu = ComfyServer(tmp_path / "a", comfy_dir=comfy, link_pack=False, device="gpu").command(8188)
    assert "--cpu" in cpu and "--cpu" not in gpu and gpu[1:] == [a for a in cpu[1:] if a != "--cpu"]
    with pytest.raises(ComfyError, match="device must be 'cpu' or 'gpu', not 'cuda'"):
        ComfyServer(tmp_path / "c", comfy_dir=comfy, link_pack=False, device="cuda")


def test_vram_estimates_off_by_more_than_15_percent_are_flagged():
    import bench_memory

    s = bench_memory.sizes()
    cards = bench_memory.card_table(s)
    limits = bench_memory.dit_limits_for_cards(cards, s)
    estimate_bf16_dit = s["dit"]["bf16"] + s["work_1024"]["dit_step_2_rows"]
    measured = [{"model": "DiT", "option": "default", "limit_bytes": None, "peak_vram_bytes": estimate_bf16_dit},
                {"model": "DiT", "option": "fp8_e4m3fn", "limit_bytes": None,
                 "peak_vram_bytes": int(1.2 * (s["dit"]["weight_dtype fp8_e4m3fn"] + s["work_1024"]["dit_step_2_rows"]))},
                {"model": "DiT", "option": "fp8_e4m3fn, streamed", "limit_bytes": limits[2], "peak_vram_bytes": 1}]
    rows = {(r["card_gb"], r["model"]): r for r in bench_memory.versus_estimates(cards, s, measured)}
    assert rows[(24, "DiT")]["flag"] is False and rows[(24, "DiT")]["ratio"] == pytest.approx(1.0)
    assert rows[(16, "DiT")]["flag"] is True and rows[(16, "DiT")]["ratio"] == pytest.approx(1.2, rel=1e-3)
    assert rows[(8, "DiT")]["flag"] is True
    assert rows[(8, "AR")]["measured"] is None and "bitsandbytes" in rows[(8, "AR")]["note"]
    assert (24, "AR") not in rows or rows[(24, "AR")]["measured"] is None


@pytest.mark.parametrize("script", ["gpu_bundle.sh", "gpu_check.sh"])
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
