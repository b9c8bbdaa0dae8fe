"""The GPU benchmarks run at tiny sizes on the CPU, so they cannot rot between the runs on a GPU machine.

Only that they run and report every figure is checked here; their numbers are meaningless on a CPU."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_bench_gpu_runs_every_variant_at_tiny_sizes(tmp_path):
    result = _run("bench_gpu.py", tmp_path / "gpu.json")
    assert set(result["ar"]) == {"raw generate", "pack standard", "pack compiled", "batch 4"}
    assert set(result["decoder"]) == {"diffusers", "pack sequential", "pack batched", "VAE decode"}
    assert all(row["seconds"] > 0 for row in list(result["ar"].values()) + list(result["decoder"].values()))
    assert len(result["goals"]) == 4 and result["end_to_end_seconds"] > 0
    assert "first run at" in " ".join(result["ar"]["pack compiled"]["notes"])  # the compiled path really ran


def test_bench_memory_reports_every_option_and_card(tmp_path):
    result = _run("bench_memory.py", tmp_path / "memory.json")
    assert set(result["sizes"]["ar"]) == {"bf16", "weight_dtype fp8_e4m3fn", "quantization int8",
                                          "quantization nf4"}
    assert [row["card_gb"] for row in result["cards"]] == [24, 16, 12, 8]
    assert all(row["fits"] for row in result["cards"])
    assert 0 < result["cast_layer_cost"]["ar_cast_vs_plain"] < 10


def test_bench_load_measures_every_format_in_its_own_process(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_load.py"), "--tiny", "--only", "dit", "--work",
                           str(tmp_path / "work"), "--out", str(tmp_path / "load.json")],
                          capture_output=True, text=True, timeout=900, cwd=REPO / "bench")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    assert len(result["rows"]) == 6 and {r["model"] for r in result["rows"]} == {"dit"}  # the AR rows: same code
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["kept_bytes"] > 0 and row["peak_rss"] >= row["peak_anon"] > 0
