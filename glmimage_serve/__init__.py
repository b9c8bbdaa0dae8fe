"""GLM-Image's AR stage served by vLLM-Omni: `python -m glmimage_serve --model PATH`.

Runs ONLY inside the server's own environment (scripts/setup_vllm.sh builds it at .cache/venv-vllm-omni;
on a GPU box: pip install vllm vllm-omni). ComfyUI never imports this package: the pack's node talks to
it over HTTP (glmimage_core/ar/remote.py). The pack writes none of the model, the scheduler or the
batching: vLLM-Omni's `GlmImageForConditionalGeneration` runs under vLLM's engine; this package only
  - registers a one-stage pipeline (the AR stage alone, returning token ids) with vLLM-Omni
    (plugin.py, loaded through the `vllm_omni.general_plugins` entry point in omni's processes and the
    `vllm.general_plugins` one in vLLM's engine core, whose scheduler needs the model class too),
  - names the model variant that also hands back the source images' token ids (model.py),
  - supplies the CPU worker vLLM-Omni 0.30 lacks (cpu_worker.py; on GPUs omni's own worker runs),
  - writes the deploy config from the command line (deploy.py) and serves HTTP (http_front.py).
"""
