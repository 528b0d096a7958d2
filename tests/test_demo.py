"""`make run`'s demo: the real pipeline on the demo media leaves no face visible.

jobs/demo.py composes the demo from photos shipped in scikit-image and knows where it put every face (the
collage's seven heads, 15-114 px faces, the rotated phone photo, the cameraman, every frame of the clip); each
is scored in the anonymized output with the leak metric (anon_core/evaluation/leak.py).
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_core.evaluation import leak_image


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from jobs.cli import main
    from jobs.demo import build

    root = tmp_path_factory.mktemp("demo")
    build(root / "input")
    with redirect_stdout(io.StringIO()):
        rc = main(["anonymize", str(root / "input"), "-o", str(root / "output")])
    assert rc != 0  # the truncated upload fails on purpose (fail closed, no output for it)
    assert not (root / "output" / "scenes" / "broken_upload.jpg").exists()
    return root


def _rgb(path: Path) -> np.ndarray:
    from PIL import ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


@pytest.mark.parametrize("name", ["people/astronaut_phone.jpg", "people/cameraman.png", "people/crowd_collage.jpg"])
def test_no_face_visible_in_demo_images(demo, name):
    from jobs.demo import demo_faces

    boxes = np.array(demo_faces()[name], float)
    orig, out = _rgb(demo / "input" / name), _rgb(demo / "output" / name)
    assert orig.shape == out.shape
    r = leak_image(orig, out, boxes)
    assert r.evaluated.all()  # every placed face is >= 10 px and scored
    leaked = [[round(v) for v in b] for b, lk in zip(boxes, r.leaked) if lk]
    assert not leaked, f"{name}: faces left visible at {leaked} (ssim {r.ssim.round(2)}, detail {r.detail.round(2)})"


def test_no_face_visible_in_demo_clip(demo):
    import av

    from jobs.demo import demo_faces

    def frames(p: Path) -> list[np.ndarray]:
        with av.open(str(p)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    name = "people/astronaut_walk.mp4"
    src, out = frames(demo / "input" / name), frames(demo / "output" / name)
    assert len(src) == len(out) == 75
    faces = demo_faces(len(src))[name]
    leaked = [i for i, (a, b, box) in enumerate(zip(src, out, faces)) if leak_image(a, b, np.array(box)).leaked[0]]
    assert not leaked, f"frames with the face visible: {leaked}"
