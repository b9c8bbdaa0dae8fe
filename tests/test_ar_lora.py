"""'Load GLM-Image AR LoRA' in-process with ComfyUI's real patcher, against transformers + PEFT merged by peft.

The LoRAs are made by peft itself (`get_peft_model` + `save_pretrained`, random non-zero A and B) on the
tiny AR model; the reference is peft's `merge_and_unload` (its `set_scale` for strength 0.5) and plain
transformers `generate`, greedy. Tokens must be equal: ComfyUI's LoRA maths and peft's agree to float
rounding, far below what flips a greedy choice on these models.
"""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from glmimage_core.demo.models import peft_merged_ar_model, random_ar_lora

PROMPT = "make the fox red <sop>4 5<eop>"  # 4 x 5 tokens: not square


@pytest.fixture(scope="module")
def pk(comfy_pack):
    return lambda name: importlib.import_module(f"{comfy_pack.__name__}.{name}")


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_ar_dir):
    """Two PEFT LoRAs of the tiny AR model: r 8 / alpha 16 on q/k/v/o, and one on the MLP with per-module
    rank and alpha patterns and rsLoRA."""
    root = tmp_path_factory.mktemp("ar_loras")
    attn = random_ar_lora(tiny_ar_dir, root / "attn", seed=1)
    mlp = random_ar_lora(tiny_ar_dir, root / "mlp", seed=2, r=4, lora_alpha=6, use_rslora=True,
                         target_modules=["gate_up_proj", "down_proj", "o_proj"],
                         rank_pattern={"down_proj": 2}, alpha_pattern={r"layers\.1\.self_attn\.o_proj": 1})
    return {"attn": attn, "mlp": mlp}


@pytest.fixture
def loras_folder(tmp_path, monkeypatch, comfy_pack):
    """A real models/loras entry for this test only (ComfyUI's folder_paths, restored afterwards)."""
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["loras"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)] + list(paths), extensions))
    return tmp_path


@pytest.fixture(scope="module")
def comfy_ar(pk, tiny_ar_dir):
    """The tiny AR model as the loader node loads it inside ComfyUI (cast layers, a ComfyUI patcher)."""
    return pk("glmimage_core.ar.loading").load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def inputs(pk, comfy_ar):
    """Image-to-image (the vision tower and the VQ codebook run too): 21 tokens to sample, where text-to-image
    samples a 16 x 16 preview grid first (once, in the first test)."""
    source = torch.rand(64, 96, 3, generator=torch.Generator().manual_seed(5))
    return pk("glmimage_core.ar.chat_prompt").prepare_inputs(comfy_ar.processor, PROMPT, images=[source])


def tokens(pk, ar, inputs, **options) -> torch.Tensor:
    generate = pk("glmimage_core.ar.generation")
    return generate.generate_tokens(ar, inputs, sampling=generate.SamplingSettings(do_sample=False),
                                    **options).sequences


def reference(tiny_ar_dir, inputs, loras) -> torch.Tensor:
    """Greedy tokens of transformers' generate on the model with the adapters merged by peft."""
    model = peft_merged_ar_model(tiny_ar_dir, loras)
    with torch.no_grad():
        out = model.generate(**inputs.model_inputs, do_sample=False,
                             max_new_tokens=inputs.shape.max_new_tokens(inputs.mode))
    return out[:, inputs.input_length:]


def node(pk):
    return pk("nodes.ar_lora").GLMImageARLoraLoader


def apply(pk, ar, name, strength):
    return node(pk).execute(ar, name, strength).args[0]


def put(folder, lora_dir, name):
    """A PEFT adapter folder copied into models/loras/<name>/; returns its dropdown entry."""
    (folder / name).mkdir()
    for file in lora_dir.iterdir():
        (folder / name / file.name).write_bytes(file.read_bytes())
    return f"{name}/adapter_model.safetensors"


def base_weights_equal_the_file(ar, tiny_ar_dir) -> bool:
    saved = load_file(str(tiny_ar_dir / "model.safetensors"))
    state = ar.model.state_dict()
    return all(torch.equal(state[key], saved[key]) for key in state if key in saved and "proj" in key)


# --------------------------------------------------------------------------- equal to PEFT's merge


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_tokens_equal_transformers_with_the_adapter_merged_by_peft(pk, comfy_ar, inputs, loras, loras_folder,
                                                                   tiny_ar_dir, strength):
    name = put(loras_folder, loras["attn"], "attn")
    assert name in pk("glmimage_comfy.ar_lora_patches").lora_choices()
    with_lora = apply(pk, comfy_ar, name, strength)
    assert with_lora is not comfy_ar and with_lora.model is comfy_ar.model  # one module, patched on load
    ours = tokens(pk, with_lora, inputs)
    assert ours.shape == (1, inputs.shape.max_new_tokens(inputs.mode))
    assert torch.equal(ours, reference(tiny_ar_dir, inputs, [(loras["attn"], strength)]))
    assert not torch.equal(ours, tokens(pk, comfy_ar, inputs))  # the LoRA changed the tokens
    if strength == 1:  # text to image too
        t2i = pk("glmimage_core.ar.chat_prompt").prepare_inputs(comfy_ar.processor, "a red fox <sop>4 5<eop>")
        assert torch.equal(tokens(pk, with_lora, t2i), reference(tiny_ar_dir, t2i, [(loras["attn"], 1.0)]))


def test_strength_0_is_no_lora_and_the_base_model_stays_as_loaded(pk, comfy_ar, inputs, loras, loras_folder,
                                                                  tiny_ar_dir):
    name = put(loras_folder, loras["attn"], "attn")
    assert apply(pk, comfy_ar, name, 0.0) is comfy_ar
    plain = tokens(pk, comfy_ar, inputs)
    with_lora = apply(pk, comfy_ar, name, 1.0)
    first = tokens(pk, with_lora, inputs, offload_after=False)  # the LoRA's weights stay loaded...
    assert torch.equal(tokens(pk, comfy_ar, inputs), plain)  # ...and the other branch gets the base back
    assert base_weights_equal_the_file(comfy_ar, tiny_ar_dir)
    assert torch.equal(tokens(pk, with_lora, inputs, offload_after=True), first)
    assert torch.equal(tokens(pk, comfy_ar, inputs), plain)
    assert pk("glmimage_core.ar.loading").load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu") is comfy_ar


def test_two_loras_chain_with_rank_and_alpha_patterns_and_rslora(pk, comfy_ar, inputs, loras, loras_folder,
                                                                 tiny_ar_dir):
    attn, mlp = put(loras_folder, loras["attn"], "attn"), put(loras_folder, loras["mlp"], "mlp")
    layers = pk("glmimage_core.ar.lora_adapters").read_ar_lora(loras_folder / "mlp", comfy_ar.model).layers
    scales = {layer.module.split("layers.")[1]: (layer.rank, layer.scale) for layer in layers}
    assert scales["0.mlp.down_proj"] == (2, pytest.approx(6 / 2 ** 0.5))  # rank_pattern, rsLoRA
    assert scales["1.self_attn.o_proj"] == (4, pytest.approx(1 / 2))  # alpha_pattern
    chained = apply(pk, apply(pk, comfy_ar, attn, 1.0), mlp, 0.5)
    ours = tokens(pk, chained, inputs)
    assert torch.equal(ours, reference(tiny_ar_dir, inputs, [(loras["attn"], 1.0), (loras["mlp"], 0.5)]))
    assert not torch.equal(ours, tokens(pk, apply(pk, comfy_ar, attn, 1.0), inputs))  # the second one counts


def test_a_streamed_ar_model_gets_the_lora_in_its_cast_layers(pk, comfy_ar, inputs, loras, loras_folder):
    """ComfyUI's partial load: streamed cast layers apply the patches per forward (its lowvram patches)."""
    with_lora = apply(pk, comfy_ar, put(loras_folder, loras["attn"], "attn"), 1.0)
    full = tokens(pk, with_lora, inputs)
    comfy_host = pk("glmimage_comfy.comfy_host")
    streamed = tokens(pk, with_lora, inputs, vram_limit=comfy_host.patcher_of(with_lora.model).model_size() // 4)
    patcher = comfy_host.loaded_patcher(with_lora.model)  # the LoRA's clone of the base patcher
    assert patcher is not comfy_host.patcher_of(with_lora.model) and patcher.loaded_size() < patcher.model_size()
    assert sum(getattr(m, "comfy_cast_weights", False) for m in comfy_ar.model.modules()) > 10
    assert torch.equal(streamed, full)


def test_fp8_weights_take_the_lora_and_keep_their_base(pk, tiny_ar_dir, inputs, loras, loras_folder, tmp_path):
    shutil.copytree(tiny_ar_dir, tmp_path / "fp8-ar")  # a folder of its own: the cache keeps the fp32 model too
    fp8 = pk("glmimage_core.ar.loading").load_ar_model(str(tmp_path / "fp8-ar"), dtype="fp32", device="cpu",
                                                       weight_dtype="fp8_e4m3fn")
    q_proj = fp8.model.model.language_model.layers[0].self_attn.q_proj
    before = q_proj.weight.detach().clone()
    plain = tokens(pk, fp8, inputs)
    lora = tokens(pk, apply(pk, fp8, put(loras_folder, loras["attn"], "attn"), 1.0), inputs)
    assert before.dtype == torch.float8_e4m3fn and not torch.equal(lora, plain)
    assert torch.equal(tokens(pk, fp8, inputs), plain)
    assert torch.equal(q_proj.weight.view(torch.uint8), before.view(torch.uint8))


# --------------------------------------------------------------------------- files and refusals


def test_one_file_adapter_with_its_config_in_the_metadata(pk, comfy_ar, inputs, loras, loras_folder, tiny_ar_dir):
    lora_module = pk("glmimage_core.ar.lora_adapters")
    lora_module.write_single_file(loras["attn"], loras_folder / "attn_one_file.safetensors")
    ours = tokens(pk, apply(pk, comfy_ar, "attn_one_file.safetensors", 0.5), inputs)
    assert torch.equal(ours, reference(tiny_ar_dir, inputs, [(loras["attn"], 0.5)]))
    # diffusers' form: keys and settings under the pipeline's component name, settings in lora_adapter_metadata
    weights = load_file(str(loras["attn"] / "adapter_model.safetensors"))
    config = json.loads((loras["attn"] / "adapter_config.json").read_text())
    save_file({k.replace("base_model.model.", "vision_language_encoder."): v for k, v in weights.items()},
              str(loras_folder / "diffusers_form.safetensors"), metadata={"lora_adapter_metadata": json.dumps(
                  {f"vision_language_encoder.{k}": config[k] for k in ("r", "lora_alpha", "target_modules")})})
    read = lambda path: lora_module.read_ar_lora(path, comfy_ar.model).layers  # noqa: E731
    folder_layers, diffusers_layers = read(loras["attn"]), read(loras_folder / "diffusers_form.safetensors")
    assert [(a.module, a.scale) for a in folder_layers] == [(b.module, b.scale) for b in diffusers_layers]
    assert all(torch.equal(a.delta(), b.delta()) for a, b in zip(folder_layers, diffusers_layers))


def test_the_dropdown_lists_adapters_under_models_glm_image(pk, comfy_ar, inputs, loras, loras_folder, tmp_path,
                                                           monkeypatch):
    import folder_paths

    pk("glmimage_comfy.comfy_host").register_comfy_folder()
    paths, extensions = folder_paths.folder_names_and_paths["glm_image"]
    tmp_path = tmp_path / "glm_image"  # (tmp_path itself is models/loras here)
    tmp_path.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "glm_image", ([str(tmp_path)] + list(paths), extensions))
    lora_module = pk("glmimage_core.ar.lora_adapters")
    put(tmp_path, loras["attn"], "peft-folder")
    (tmp_path / "loras").mkdir()
    lora_module.write_single_file(loras["attn"], tmp_path / "loras" / "one.safetensors")
    (tmp_path / "some-model").mkdir()  # a model folder is not entered, whatever it holds
    (tmp_path / "some-model" / "config.json").write_text("{}")
    lora_module.write_single_file(loras["attn"], tmp_path / "some-model" / "hidden.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "loras" / "weights.safetensors"))  # no adapter config
    choices = pk("glmimage_comfy.ar_lora_patches").lora_choices()
    ours = [c for c in choices if c.endswith(" [glm_image]")]
    assert ours == ["loras/one.safetensors [glm_image]", "peft-folder/adapter_model.safetensors [glm_image]"]
    one_file = tokens(pk, apply(pk, comfy_ar, ours[0], 0.5), inputs)
    assert torch.equal(one_file, tokens(pk, apply(pk, comfy_ar, ours[1], 0.5), inputs))
    errors = pk("glmimage_core.errors")
    with pytest.raises(errors.GlmImageInputError, match="'gone.safetensors' is not an adapter under models/glm_image"):
        apply(pk, comfy_ar, "gone.safetensors [glm_image]", 1.0)


def refused(pk, comfy_ar, name: str, match: str):
    errors = pk("glmimage_core.errors")
    with pytest.raises(errors.GlmImageInputError, match=match):
        apply(pk, comfy_ar, name, 1.0)


def test_adapters_of_other_models_are_refused_naming_the_file_and_what_they_target(pk, comfy_ar, loras, loras_folder,
                                                                                  tmp_path_factory):
    from glmimage_core.demo.decoder import random_lora
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    # a DiT LoRA (diffusers' keys, alpha in the metadata), as 'Load GLM-Image LoRA' takes it
    dit = tmp_path_factory.mktemp("dit") / "glm"
    pk("glmimage_core.demo.decoder").build_tiny_full_hub_layout(dit)
    layers = random_lora(dit / "transformer", ("transformer_blocks.0.attn1.to_q",), seed=1)
    save_file({f"transformer.{k}": v for k, v in layers.items()}, str(loras_folder / "dit.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8})})
    refused(pk, comfy_ar, "dit.safetensors", r"lora_name 'dit.safetensors': '.*dit.safetensors' is not a PEFT LoRA "
                                             r"of the GLM-Image AR model: it targets GLM-Image's DiT .*'Load GLM-Image "
                                             r"LoRA'.*transformer_blocks.0.attn1.to_q")
    # a PEFT LoRA of another transformers model (a tiny Llama)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
        str(loras_folder / "llama"))
    refused(pk, comfy_ar, "llama/adapter_model.safetensors",
            r"not a PEFT LoRA of the GLM-Image AR model: it targets layers that the GLM-Image AR model does not have "
            r"\(e.g. 'model.layers.0.self_attn.q_proj'\).*\(LlamaForCausalLM\)")
    # the right layer names with another model's widths
    attn = put(loras_folder, loras["attn"], "wide")
    weights = load_file(str(loras_folder / "wide" / "adapter_model.safetensors"))
    key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    weights[key] = torch.randn(8, 128)
    save_file(weights, str(loras_folder / "wide" / "adapter_model.safetensors"))
    refused(pk, comfy_ar, attn, r"was trained for another model: model.language_model.layers.0.self_attn.q_proj is "
                                r"\[64, 64\] in this GLM-Image AR model but the LoRA's update is \[64, 128\]")


def test_adapters_the_loader_cannot_apply_say_why(pk, comfy_ar, tiny_ar_dir, loras, loras_folder):
    # one file without a config: its scale is unknown
    save_file(load_file(str(loras["attn"] / "adapter_model.safetensors")), str(loras_folder / "bare.safetensors"))
    refused(pk, comfy_ar, "bare.safetensors", r"'.*bare.safetensors' has no adapter config, so its scale "
                                              r"\(lora_alpha / r\) is unknown")
    # DoRA is more than W + scale x B @ A
    random_ar_lora(tiny_ar_dir, loras_folder / "dora", seed=3, use_dora=True)
    refused(pk, comfy_ar, "dora/adapter_model.safetensors", r"holds DoRA \(use_dora\)")
    # a config whose rank does not match the weights
    name = put(loras_folder, loras["attn"], "mismatch")
    config = json.loads((loras_folder / "mismatch" / "adapter_config.json").read_text())
    (loras_folder / "mismatch" / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    refused(pk, comfy_ar, name, r"its config gives model.language_model.layers.0.self_attn.k_proj rank 4 but its "
                                r"weights have rank 8")
    refused(pk, comfy_ar, "missing.safetensors", r"lora_name: 'missing.safetensors' is not in models/loras/")


def test_the_dit_lora_node_sends_an_ar_lora_to_the_ar_lora_node(pk, loras, loras_folder):
    """Refused before the DiT is touched (ComfyUI would apply none of its keys and only log them)."""
    name = put(loras_folder, loras["attn"], "attn")
    errors = pk("glmimage_core.errors")
    with pytest.raises(errors.GlmImageInputError, match="is a LoRA of GLM-Image's AR model, not of the DiT: apply "
                                                        "it with 'Load GLM-Image AR LoRA'"):
        pk("nodes.lora").GLMImageLoraLoader.execute(None, name, 1.0)
