"""Every example workflow has its template thumbnail: <stem>.jpg next to <stem>.json, as ComfyUI's template
browser fetches it (/api/workflow_templates/<pack>/<stem>.jpg); small, square, a real JPEG, and no thumbnail
left over from a workflow that is gone. scripts/editor_screenshots.py makes them in the real editor."""

from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"


def test_each_example_workflow_has_a_small_square_jpeg_thumbnail():
    workflows = {p.stem for p in EXAMPLES.glob("*.json")}
    thumbnails = {p.stem for p in EXAMPLES.glob("*.jpg")}
    assert workflows and thumbnails == workflows, (sorted(workflows), sorted(thumbnails))
    for stem in workflows:
        path = EXAMPLES / f"{stem}.jpg"
        with Image.open(path) as picture:
            assert picture.format == "JPEG" and picture.width == picture.height >= 256, (stem, picture.size)
            # a graph, not a blank card: the picture has structure (node boxes, links, text)
            assert len(picture.convert("L").getcolors(256 * 256) or []) > 32, stem
        assert path.stat().st_size <= 100_000, (stem, path.stat().st_size)
