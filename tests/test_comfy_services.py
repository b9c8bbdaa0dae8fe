"""The core uses ComfyUI's own services when ComfyUI is importable: its progress bar, its cancel
button and its models folder. These run in-process against the real ComfyUI tree. (Progress, live
previews and cancel during sampling are tested in test_token_preview.py.)"""


def test_models_glm_image_is_registered_with_folder_paths(comfy_pack, tmp_path):
    import os

    import folder_paths

    from glmimage_core.weights.model_folders import list_model_folders, register_comfy_folder

    register_comfy_folder()
    expected = os.path.join(folder_paths.models_dir, "glm_image")
    assert expected in folder_paths.get_folder_paths("glm_image")
    folder_paths.add_model_folder_path("glm_image", str(tmp_path))
    (tmp_path / "My-GLM").mkdir()
    (tmp_path / "My-GLM" / "model_index.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()
    names = list_model_folders()
    assert "My-GLM" in names and "not-a-model" not in names
