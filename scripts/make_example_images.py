"""Make example_images/: aligned 112x112 face crops from public-domain photos shipped inside Python packages.

Sources: scikit-image ``data.astronaut()`` (NASA, Eileen Collins) and ``data.camera()`` (the cameraman), and
matplotlib's ``sample_data/grace_hopper.jpg`` (US Navy). Faces are detected with the MTCNN of
``facenet-pytorch==2.5.3`` (its weights ship in the wheel; install it with ``pip install --no-deps
facenet-pytorch==2.5.3 requests``, later releases pin an old torch), aligned to the ArcFace template, and each crop
gets four degraded copies: blur, low resolution, darkness and noise.

    python -m scripts.make_example_images [--output example_images]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dataset.alignment import align_face


def source_photos() -> Dict[str, Image.Image]:
    import matplotlib
    from skimage import data

    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return {
        "astronaut": Image.fromarray(data.astronaut()).convert("RGB"),
        "cameraman": Image.fromarray(data.camera()).convert("RGB"),
        "grace_hopper": Image.open(hopper).convert("RGB"),
    }


def degrade(crop: Image.Image, rng: np.random.Generator) -> Dict[str, Image.Image]:
    """Four typical quality problems, each strong enough to matter to a face recogniser."""
    noisy = np.asarray(crop, dtype=np.float32) + rng.normal(0.0, 40.0, size=(112, 112, 3))
    return {
        "blur": crop.filter(ImageFilter.GaussianBlur(radius=3)),
        "lowres": crop.resize((14, 14), Image.Resampling.BILINEAR).resize((112, 112), Image.Resampling.NEAREST),
        "dark": ImageEnhance.Brightness(crop).enhance(0.2),
        "noise": Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)),
    }


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="example_images")
    args = parser.parse_args(argv)
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        print("needs facenet-pytorch: pip install --no-deps facenet-pytorch==2.5.3 requests", file=sys.stderr)
        return 2

    os.makedirs(os.path.join(args.output, "degraded"), exist_ok=True)
    detector = MTCNN(keep_all=True, device="cpu")
    rng = np.random.default_rng(0)
    for name, photo in source_photos().items():
        boxes, probs, landmarks = detector.detect(photo, landmarks=True)
        if boxes is None:
            print(f"no face found in {name}", file=sys.stderr)
            return 1
        # facenet-pytorch 2.5.3 returns object arrays under NumPy 2.
        boxes = np.asarray(boxes.tolist(), dtype=np.float64)
        landmarks = np.asarray(landmarks.tolist(), dtype=np.float64)
        probs = np.asarray(probs.tolist(), dtype=np.float64)
        largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        crop = align_face(photo, landmarks[largest])
        crop.save(os.path.join(args.output, f"{name}.png"))
        for kind, image in degrade(crop, rng).items():
            image.save(os.path.join(args.output, "degraded", f"{name}_{kind}.png"))
        print(f"{name}: face p={probs[largest]:.3f} box={np.round(boxes[largest]).astype(int).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
