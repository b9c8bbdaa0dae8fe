"""The GPU benchmarks run at tiny sizes on the CPU, so they cannot rot between the runs on a GPU machine (and the
GGUF size table is checked).

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


def test_bench_seam_compares_the_pack_with_plain_generate_on_both_hosts(tmp_path):
    """bench_seam.py at a tiny size: both hosts (plain, and ComfyUI in-process set up by the pack's entry point),
    the same tokens on both variants, a ratio per host. The ratio itself is the GPU / quiet-machine figure."""
    result = _run("bench_seam.py", tmp_path / "seam.json")
    assert set(result["hosts"]) == {"plain (outside ComfyUI)", "ComfyUI (in-process)"}
    for row in result["hosts"].values():
        assert row["tokens"]["pack"] == row["tokens"]["raw generate"] > 0  # same seed, same tokens
        assert len(row["seconds"]["pack"]) == len(row["seconds"]["raw generate"]) == row["rounds"] == 2
        assert row["ratio"] > 0 and row["ratio_of_fastest"] > 0 and row["cpu_ratio"] > 0


def test_bench_load_measures_every_format_in_its_own_process(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_load.py"), "--tiny", "--only", "dit", "--work",
                           str(tmp_path / "work"), "--out", str(tmp_path / "load.json")],
                          capture_output=True, text=True, timeout=900, cwd=REPO / "bench")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    assert len(result["rows"]) == 6 and {r["model"] for r in result["rows"]} == {"dit"}  # the AR rows: same code
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["kept_bytes"] > 0 and row["peak_rss"] >= row["peak_anon"] > 0


def test_bench_gguf_sizes_at_the_published_dimensions(tmp_path):
    """The README's GGUF download sizes come from this table: exact for the pack's plan, so a change to which
    tensors are quantized shows here."""
    out = tmp_path / "gguf.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gguf.py"), "--sizes-only", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sizes = json.loads(out.read_text())["download_bytes"]
    gib = {part: {k: round(v / 2**30, 2) for k, v in row.items()} for part, row in sizes.items()}
    assert gib["dit"] == {"BF16": 12.9, "Q8_0": 6.93, "Q5_1": 4.93, "Q5_0": 4.53, "Q4_1": 4.13, "Q4_0": 3.73}
    assert gib["ar"] == {"BF16": 18.84, "Q8_0": 10.73, "Q5_1": 8.03, "Q5_0": 7.49, "Q4_1": 6.95, "Q4_0": 6.4}
