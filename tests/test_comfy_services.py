"""The core uses ComfyUI's own services when ComfyUI is importable: its progress bar, its cancel
button and its models folder. These run in-process against the real ComfyUI tree."""

import pytest

from glmimage_core.generation import generate_tokens
from glmimage_core.prompting import prepare_inputs


@pytest.fixture()
def progress_hook(comfy_pack):
    import comfy.utils

    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append(value))
    yield calls
    comfy.utils.set_progress_bar_global_hook(None)


def test_progress_bar_moves_once_per_token(ar, progress_hook):
    inputs = prepare_inputs(ar.processor, "a boat <sop>2 3<eop>")
    tokens = generate_tokens(ar, inputs, seed=0)
    total = inputs.shape.max_new_tokens("t2i")
    assert tokens.sequences.shape[1] == total
    assert progress_hook == list(range(1, total + 1))


def test_cancel_stops_between_tokens_and_releases_the_model(ar, comfy_pack):
    import comfy.model_management as mm
    import comfy.utils

    seen = []

    def press_cancel_at_5(value, total, preview, node_id=None):
        seen.append(value)
        if value == 5:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(press_cancel_at_5)
    try:
        inputs = prepare_inputs(ar.processor, "a boat <sop>4 4<eop>")
        with pytest.raises(mm.InterruptProcessingException):
            generate_tokens(ar, inputs, seed=0)
        assert seen == [1, 2, 3, 4, 5]  # the 6th token was never sampled
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert not ar.lock.locked()
    assert generate_tokens(ar, prepare_inputs(ar.processor, "x <sop>1 1<eop>"), seed=0).sequences.numel() > 0


def test_models_glm_image_is_registered_with_folder_paths(comfy_pack, tmp_path):
    import os

    import folder_paths

    from glmimage_core.model_folders import list_model_folders, register_comfy_folder

    register_comfy_folder()
    expected = os.path.join(folder_paths.models_dir, "glm_image")
    assert expected in folder_paths.get_folder_paths("glm_image")
    folder_paths.add_model_folder_path("glm_image", str(tmp_path))
    (tmp_path / "My-GLM").mkdir()
    (tmp_path / "My-GLM" / "model_index.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()
    names = list_model_folders()
    assert "My-GLM" in names and "not-a-model" not in names
