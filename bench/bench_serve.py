"""AR on a server: N requests at once against the same N one at a time, on ONE vLLM-Omni server.

    .venv/bin/python bench/bench_serve.py                 # tiny model, CPU server (scripts/setup_vllm.sh)
    .venv/bin/python bench/bench_serve.py --n 1 2 4 8 --rounds 2

Each "user" is what one ComfyUI prompt sends: a request for one picture (glmimage_core.ar.remote, the server
node's client). "together": N users at once (N threads, as N ComfyUI workers or N queued prompts on several
machines would; images=N in one run sends the same N requests); "one at a time": the same N requests in a
row. images/s of both and their ratio, for N = 1, 2, 4, 8, interleaved round by round so that machine noise
hits both alike. Next to it, the local node (transformers in this process, same model, same shape): one
picture, and images=4 in one batched generate. Writes bench/results/serve.json and prints a markdown table.
The server's CPU worker binds its compute threads to one core (vLLM's CPU default on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, machine  # noqa: E402  (puts the repo on sys.path)

from glmimage_core.ar.chat_prompt import prepare_inputs  # noqa: E402
from glmimage_core.ar.generation import SamplingSettings, generate_tokens  # noqa: E402
from glmimage_core.ar.loading import load_ar_model  # noqa: E402
from glmimage_core.ar.remote import RemoteSampling, generate_tokens_remote  # noqa: E402
from glmimage_core.ar.remote_http import API_KEY_ENV  # noqa: E402
from glmimage_core.demo.models import build_tiny_ar_model  # noqa: E402
from glmimage_core.shapes import GridShape  # noqa: E402
from tests.serve_harness import API_KEY, ArServer, missing_reason  # noqa: E402

SHAPE = GridShape(8, 8)  # 256 x 256 px: preview + grid + end = the tokens one picture needs
SAMPLING = RemoteSampling(do_sample=True)  # the model's own settings, as a user runs it


class _Quiet:
    def update(self, n=1):
        pass


def together(url: str, inputs, n: int, seed: int) -> float:
    errors: list[BaseException] = []

    def user(i: int) -> None:
        try:
            generate_tokens_remote(url, inputs, seed=seed + i, sampling=SAMPLING, progress=_Quiet(),
                                   check_interrupted=None)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def one_at_a_time(url: str, inputs, n: int, seed: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        generate_tokens_remote(url, inputs, seed=seed + i, sampling=SAMPLING, progress=_Quiet(), check_interrupted=None)
    return time.perf_counter() - t0


def local(ar, inputs, images: int, seed: int) -> float:
    t0 = time.perf_counter()
    generate_tokens(ar, inputs, seed=seed, sampling=SamplingSettings(do_sample=True), images=images,
                    progress=_Quiet())
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serve.json"))
    args = parser.parse_args()
    reason = missing_reason()
    if reason:
        print(f"[bench_serve] {reason}", file=sys.stderr)
        return 2
    os.environ[API_KEY_ENV] = API_KEY
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = build_tiny_ar_model(tmp / "tiny")
    ar = load_ar_model(str(model), dtype="fp32", device="cpu")
    inputs = prepare_inputs(ar.processor, "a harbour at sunrise", shape=SHAPE)
    inputs.model_identity = ar.identity()
    server = ArServer(model, tmp / "server.log")
    t0 = time.perf_counter()
    server.start()
    start_s = time.perf_counter() - t0
    try:
        for _ in range(2):  # warm up: the first requests pay for the engine's first steps
            together(server.url, inputs, 2, 0)
        times: dict = {n: {"together": [], "one_at_a_time": []} for n in args.n}
        local_times: dict = {1: [], 4: []}
        for r in range(args.rounds):
            for n in args.n:
                times[n]["together"].append(together(server.url, inputs, n, 1000 * r))
                times[n]["one_at_a_time"].append(one_at_a_time(server.url, inputs, n, 1000 * r))
            for images in local_times:
                local_times[images].append(local(ar, inputs, images, r))
    finally:
        server.stop()
    tokens = SHAPE.max_new_tokens("t2i")
    rows = []
    for n in args.n:
        tog, seq = statistics.median(times[n]["together"]), statistics.median(times[n]["one_at_a_time"])
        rows.append({"n": n, "together_s": tog, "one_at_a_time_s": seq, "together_images_per_s": n / tog,
                     "one_at_a_time_images_per_s": n / seq, "ratio": seq / tog})
    local_rows = {str(k): {"s": statistics.median(v), "images_per_s": k / statistics.median(v)}
                  for k, v in local_times.items()}
    result = {"machine": machine(), "shape": SHAPE.describe(), "tokens_per_picture": tokens,
              "server_start_s": start_s, "rounds": args.rounds, "server": rows, "local_node": local_rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nAR server (vLLM-Omni, CPU) vs the same requests one at a time; tiny model, {SHAPE.describe()}, "
          f"{tokens} tokens per picture; server start {start_s:.0f} s\n")
    print("| N requests | together (s) | one at a time (s) | images/s together | images/s one at a time | ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {row['together_s']:.2f} | {row['one_at_a_time_s']:.2f} | "
              f"{row['together_images_per_s']:.2f} | {row['one_at_a_time_images_per_s']:.2f} | {row['ratio']:.2f}x |")
    for k, v in local_rows.items():
        print(f"| local node, images={k} (transformers, this process) | {v['s']:.2f} | | {v['images_per_s']:.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
