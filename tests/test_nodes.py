"""The nodes, called in-process as ComfyUI calls them, with ComfyUI's real comfy_api."""

import os

import pytest
import torch



@pytest.fixture(scope="module")
def nodes(comfy_pack):
    import sys

    return sys.modules[f"{comfy_pack.__name__}.nodes"]


@pytest.fixture(scope="module")
def models_dir(tiny_ar_dir, monkeypatch_module):
    monkeypatch_module.setenv("GLMIMAGE_MODELS_DIR", str(tiny_ar_dir.parent))
    return tiny_ar_dir.parent


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _schemas(nodes):
    return {n.define_schema().node_id: n for n in nodes.NODES}


def test_every_input_and_output_has_a_tooltip_and_the_category_is_glm_image(nodes):
    for node in nodes.NODES:
        schema = node.define_schema()
        schema.validate()  # what ComfyUI checks when it loads the pack (e.g. unique input/output ids)
        assert schema.node_id.startswith("GLMImage")
        assert schema.category.startswith("GLM-Image") and schema.description
        for item in list(schema.inputs) + list(schema.outputs):
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


def test_text_to_image_through_the_nodes(nodes, models_dir, tiny_ar_dir):
    n = _schemas(nodes)
    loader = n["GLMImageARLoader"].define_schema().inputs[0]
    assert tiny_ar_dir.name in loader.options
    ar = n["GLMImageARLoader"].execute(model=tiny_ar_dir.name, dtype="fp32", device="cpu", attention="sdpa")[0]
    shape_out = n["GLMImageShape"].execute(size_from="pixels", width=96, height=128, token_h=1, token_w=1, tag="")
    shape = shape_out[0]
    assert (shape.token_h, shape.token_w) == (4, 3) and list(shape_out.args[1:]) == [96, 128, 4, 3, 18, 13, 18 * 13 + 12 + 1, 13]
    inputs = n["GLMImagePrompt"].execute(ar_model=ar, prompt="a red fox", shape=shape)[0]
    tokens, notes = n["GLMImageGenerateTokens"].execute(ar_model=ar, inputs=inputs, seed=3, images=1, do_sample=True,
                                                        temperature=0.0, top_p=0.0, top_k=0, speed="standard",
                                                        offload_after=True).args
    assert notes == ""
    prior, count = n["GLMImageExtractTokens"].execute(tokens=tokens).args
    assert prior.grids.shape == (1, 4, 3) and count == 12 and prior.mode == "t2i"
    compiled, notes = n["GLMImageGenerateTokens"].execute(ar_model=ar, inputs=inputs, seed=3, images=1,
                                                          do_sample=True, temperature=0.0, top_p=0.0, top_k=0,
                                                          speed="compiled", offload_after=True).args
    assert "speed=compiled needs a CUDA GPU" in notes and "used speed=standard" in notes  # the notes output
    assert torch.equal(compiled.sequences, tokens.sequences)


def test_image_to_image_through_the_nodes_with_a_batch_and_a_second_input(nodes, ar):
    n = _schemas(nodes)
    batch = torch.rand(2, 64, 96, 3)
    other = torch.rand(1, 128, 64, 1)  # greyscale, another size
    inputs = n["GLMImagePrompt"].execute(ar_model=ar, prompt="edit <sop>2 3<eop>", image=batch, image_2=other)[0]
    assert inputs.mode == "i2i" and len(inputs.sources) == 3
    tokens = n["GLMImageGenerateTokens"].execute(ar_model=ar, inputs=inputs, seed=0, images=1, do_sample=True,
                                                 temperature=0.0, top_p=0.0, top_k=0, speed="standard",
                                                 offload_after=False)[0]
    prior, count = n["GLMImageExtractTokens"].execute(tokens=tokens).args
    assert prior.grids.shape == (1, 2, 3) and count == 6
    assert [tuple(g.shape) for g in prior.source_grids] == [(2, 3), (2, 3), (4, 2)]


def test_shape_node_modes_and_errors(nodes):
    shape_node = _schemas(nodes)["GLMImageShape"]
    assert shape_node.execute(size_from="tag", width=32, height=32, token_h=1, token_w=1,
                              tag="<sop>36 24<eop>")[0].tag() == "<sop>36 24<eop>"
    assert shape_node.execute(size_from="tokens", width=32, height=32, token_h=5, token_w=7,
                              tag="")[0].tag() == "<sop>5 7<eop>"
    with pytest.raises(ValueError, match="malformed"):
        shape_node.execute(size_from="tag", width=32, height=32, token_h=1, token_w=1, tag="<sop>36x24<eop>")
    assert shape_node.validate_inputs(size_from="tag", width=32, height=32, token_h=1, token_w=1,
                                      tag="<sop>36 24<eop>") is True
    assert "malformed" in shape_node.validate_inputs(size_from="tag", width=32, height=32, token_h=1, token_w=1,
                                                     tag="<sop>36x24<eop>")


def test_loader_without_models_says_where_to_put_them(nodes):
    loader = _schemas(nodes)["GLMImageARLoader"]
    with pytest.raises(ValueError, match="models/glm_image"):
        loader.execute(model=nodes.ar_loader.NO_MODELS, dtype="auto", device="auto", attention="sdpa", quantization="none")


@pytest.fixture(scope="module")
def full_model(tmp_path_factory, monkeypatch_module):
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout

    root = tmp_path_factory.mktemp("full")
    build_tiny_full_hub_layout(root / "GLM-Image")
    monkeypatch_module.setenv("GLMIMAGE_MODELS_DIR", str(root))
    return root / "GLM-Image"


def _t2i_prior(n, seed=3):
    ar = n["GLMImageARLoader"].execute(model="GLM-Image", dtype="auto", device="auto", attention="sdpa")[0]
    inputs = n["GLMImagePrompt"].execute(ar_model=ar, prompt='a sign that says "HI" <sop>4 3<eop>')[0]
    tokens = n["GLMImageGenerateTokens"].execute(ar_model=ar, inputs=inputs, seed=seed, images=1, do_sample=True,
                                                 temperature=0.0, top_p=0.0, top_k=0, speed="standard",
                                                 offload_after=True)[0]
    return n["GLMImageExtractTokens"].execute(tokens=tokens)[0]


def test_decode_preview_and_token_roundtrip_through_the_nodes(nodes, full_model, tmp_path):
    import folder_paths

    n = _schemas(nodes)
    prior = _t2i_prior(n)
    decoder = n["GLMImageDecoderLoader"].execute(model="GLM-Image", dtype="auto", device="auto")[0]
    image = n["GLMImageDecode"].execute(decoder=decoder, prior=prior, prompt="", steps=3, guidance=1.5, seed=0)[0]
    assert image.shape == (1, 128, 96, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0

    preview = n["GLMImagePreviewTokens"].execute(prior=prior, cell_px=4)[0]
    assert preview.shape == (1, 16, 12, 3)

    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    load = n["GLMImageLoadTokens"]
    assert load.define_schema().inputs[0].options == [nodes.token_io.NO_TOKEN_FILES]
    saved = n["GLMImageSaveTokens"].execute(prior=prior, filename_prefix="glm_image/tokens")
    file = saved[0]
    assert file == "glm_image/tokens_00001_.safetensors [output]"
    assert load.define_schema().inputs[0].options == [file]  # the dropdown lists it
    loaded = load.execute(token_file=file)[0]
    assert torch.equal(loaded.grids, prior.grids) and loaded.prompt == prior.prompt
    again = n["GLMImageDecode"].execute(decoder=decoder, prior=loaded, prompt="", steps=3, guidance=1.5, seed=0)[0]
    assert torch.equal(again, image)  # re-decoding saved tokens gives the same picture
    linked = load.execute(token_file=nodes.token_io.NO_TOKEN_FILES, file=file)[0]  # the link wins
    assert torch.equal(linked.grids, prior.grids)
    first = load.fingerprint_inputs(token_file=file)
    assert load.fingerprint_inputs(token_file=file) == first
    saved_file = tmp_path / "output" / "glm_image" / "tokens_00001_.safetensors"
    os.utime(saved_file, ns=(0, saved_file.stat().st_mtime_ns + 10**9))  # the file changed on disk
    assert load.fingerprint_inputs(token_file=file) != first
    with pytest.raises(ValueError, match="file is empty"):
        load.execute(token_file=file, file="  ")


def test_load_tokens_checks_names_and_takes_linked_inputs(nodes, tmp_path):
    import folder_paths

    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    load = _schemas(nodes)["GLMImageLoadTokens"]
    with pytest.raises(ValueError, match="token_file: there are no token files"):
        load.execute(token_file=nodes.token_io.NO_TOKEN_FILES)
    assert "token_file: there are no token files" in load.validate_inputs(token_file=nodes.token_io.NO_TOKEN_FILES)
    assert "token_file: 'gone.safetensors' does not exist" in load.validate_inputs(token_file="gone.safetensors")
    assert "file: '../../etc/hosts' points outside" in load.validate_inputs(token_file="x", file="../../etc/hosts")
    with pytest.raises(ValueError, match="token_file: '/etc/hosts' points outside ComfyUI's input folder"):
        load.execute(token_file="/etc/hosts")
    # Linked inputs reach validate_inputs / fingerprint_inputs as None: accepted, decided when it runs.
    assert load.validate_inputs(token_file="gone.safetensors", file=None) is True
    assert load.validate_inputs(token_file=None) is True
    assert load.fingerprint_inputs(token_file=None) == "linked"
    assert load.fingerprint_inputs(token_file="gone.safetensors", file=None) == "linked"
    assert load.fingerprint_inputs(token_file="gone.safetensors") == "gone.safetensors"


def test_shape_node_accepts_linked_inputs_and_checks_their_values_when_it_runs(nodes):
    shape_node = _schemas(nodes)["GLMImageShape"]
    base = dict(size_from="pixels", width=96, height=128, token_h=1, token_w=1, tag="")
    for name in base:  # each input linked in turn: ComfyUI passes None for it
        assert shape_node.validate_inputs(**{**base, name: None}) is True, name
    assert "width=4096 px is beyond" in shape_node.validate_inputs(**{**base, "width": 4096, "token_h": None})
    with pytest.raises(ValueError, match=r"width must be a whole number, got '96' \(str\)"):
        shape_node.execute(**{**base, "width": "96"})
    with pytest.raises(ValueError, match="size_from 'inches' is not one of"):
        shape_node.execute(**{**base, "size_from": "inches"})
    assert shape_node.execute(**{**base, "token_h": "not used in pixels mode"})[0].tag() == "<sop>4 3<eop>"


def test_image_to_image_decode_through_the_nodes(nodes, full_model):
    n = _schemas(nodes)
    ar = n["GLMImageARLoader"].execute(model="GLM-Image", dtype="auto", device="auto", attention="sdpa")[0]
    source = torch.rand(1, 96, 64, 4)  # RGBA, any size
    inputs = n["GLMImagePrompt"].execute(ar_model=ar, prompt="make it blue", image=source)[0]
    tokens = n["GLMImageGenerateTokens"].execute(ar_model=ar, inputs=inputs, seed=0, images=1, do_sample=True,
                                                 temperature=0.0, top_p=0.0, top_k=0, speed="standard",
                                                 offload_after=False)[0]
    prior = n["GLMImageExtractTokens"].execute(tokens=tokens)[0]
    decoder = n["GLMImageDecoderLoader"].execute(model="GLM-Image", dtype="auto", device="auto")[0]
    image = n["GLMImageDecode"].execute(decoder=decoder, prior=prior, prompt="", steps=2, guidance=1.5, seed=0,
                                        source_image=source)[0]
    assert image.shape == (1, inputs.shape.height, inputs.shape.width, 3)
    with pytest.raises(ValueError, match="source image"):
        n["GLMImageDecode"].execute(decoder=decoder, prior=prior, prompt="", steps=2, guidance=1.5, seed=0)
