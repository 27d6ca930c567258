"""Make a small identity-structured face set for a first training run, without VGGFace2:

    python -m scripts.make_face_set --output first_run

writes ``<output>/faces/idNN/<kind>_<strength>.png`` (aligned 112x112 crops) and ``<output>/pairs.csv`` (every pair
of images, ``a,b,mated`` with paths relative to ``faces/``, as ``evaluate.py --pairs`` reads it).

Identities: the repository's ``example_images/*.png`` (three public-domain faces, see
``scripts/make_example_images.py``) and, as synthetic stand-ins for more people, the same faces mirrored, zoomed and
colour-shifted (a face recogniser tells them apart less well than different people). Each identity holds its clean
face and the face under five degradations (blur, noise, JPEG, occlusion, darkness) at three strengths, so quality
varies within every identity. The set is the same bytes for the same ``--seed``.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import os
import sys
from typing import Callable, Dict, List, Optional

if __name__ == "__main__" and not __package__:
    # Run as a file (python scripts/make_face_set.py), Python puts scripts/ on sys.path instead of the repository
    # root that holds utils/; the root makes it run as python -m scripts.make_face_set does.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from utils.cli import OneLineParser, run_cli
from utils.errors import ConfigError, DataError, first_line
from utils.io import OutputError, check_output_dir
from utils.paths import repo_path

PROG = "python -m scripts.make_face_set"

#: The degradations, each at three strengths (index 0 mild .. 2 strong); ``rng`` draws noise and the occluder.
DEGRADATIONS: Dict[str, Callable[[Image.Image, int, np.random.Generator], Image.Image]] = {
    "blur": lambda im, s, rng: im.filter(ImageFilter.GaussianBlur(radius=(1.0, 2.5, 5.0)[s])),
    "noise": lambda im, s, rng: Image.fromarray(np.clip(
        np.asarray(im, dtype=np.float32) + rng.normal(0.0, (12.0, 30.0, 60.0)[s], size=(112, 112, 3)),
        0, 255).astype(np.uint8)),
    "jpeg": lambda im, s, rng: _jpeg(im, (30, 10, 3)[s]),
    "occlusion": lambda im, s, rng: _occlude(im, (24, 40, 60)[s], rng),
    "dark": lambda im, s, rng: ImageEnhance.Brightness(im).enhance((0.6, 0.35, 0.15)[s]),
}
STRENGTHS = 3


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _occlude(im: Image.Image, side: int, rng: np.random.Generator) -> Image.Image:
    """A grey square of ``side`` pixels over the face's centre region (where the eyes, nose and mouth are)."""
    a = np.asarray(im).copy()
    y, x = (int(v) for v in rng.integers(28, 84 - side // 2, size=2))
    a[max(0, y - side // 2):y + side // 2, max(0, x - side // 2):x + side // 2] = 128
    return Image.fromarray(a)


def _stand_in(face: Image.Image) -> Image.Image:
    """Another 'person' made from ``face``: mirrored, zoomed in by 12 % and colour-shifted (a synthetic stand-in)."""
    zoomed = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((7, 7, 105, 105)).resize(
        (112, 112), Image.Resampling.BICUBIC)
    a = np.asarray(zoomed, dtype=np.float32)
    return Image.fromarray(np.clip(a[:, :, [1, 2, 0]] * 0.7 + a * 0.3 + 10.0, 0, 255).astype(np.uint8))


def base_faces(folder: str) -> List[Image.Image]:
    """The identities' clean faces: each ``*.png`` in ``folder`` (sorted by name), then their stand-ins; a file that
    is not an image or not 112x112 is a :class:`DataError` naming it."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
    faces = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as im:
                size = im.size
                face = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"--sources: '{path}' is not a readable image ({first_line(exc)}); remove it or name "
                            "a folder of aligned 112x112 face crops") from None
        if size != (112, 112):  # resizing would distort a face that is not an aligned crop
            raise DataError(f"--sources: '{path}' is {size[0]}x{size[1]}, not an aligned 112x112 face crop; crop it "
                            "(inference.py --align --save-crops DIR writes such crops) or remove it")
        faces.append(face)
    return faces + [_stand_in(f) for f in faces]


def make_face_set(sources: str, seed: int) -> Dict[str, Image.Image]:
    """``{path relative to faces/: image}`` of every identity: ``idNN/clean.png`` and ``idNN/<kind>_<s>.png``."""
    rng = np.random.default_rng(seed)
    out: Dict[str, Image.Image] = {}
    for i, face in enumerate(base_faces(sources)):
        out[f"id{i:02d}/clean.png"] = face
        for kind, degrade in DEGRADATIONS.items():
            for s in range(STRENGTHS):
                out[f"id{i:02d}/{kind}_{s}.png"] = degrade(face, s, rng)
    return out


def pairs_rows(paths: List[str]) -> List[List[str]]:
    """Every pair of ``paths`` (in order), mated when both lie in the same identity folder."""
    return [[a, b, str(int(a.split("/")[0] == b.split("/")[0]))] for a, b in itertools.combinations(paths, 2)]


def main(argv: Optional[List[str]] = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output", default="first_run", help="folder for faces/ and pairs.csv (first_run)")
    parser.add_argument("--sources", default="example_images", help="folder of the aligned faces (example_images)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and occluders (0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {args.seed}")
    sources = repo_path(args.sources)
    faces_dir, pairs_file = os.path.join(args.output, "faces"), os.path.join(args.output, "pairs.csv")
    if not os.path.lexists(sources):
        raise DataError(f"--sources '{args.sources}' does not exist; name a folder of aligned 112x112 face crops")
    if not os.path.isdir(sources):
        raise DataError(f"--sources '{args.sources}' is a file; name the folder that holds the faces")
    if not any(n.lower().endswith(".png") for n in os.listdir(sources)):
        raise DataError(f"--sources '{args.sources}' holds no .png faces; name a folder of aligned 112x112 face crops")
    check_output_dir(args.output, "--output")
    taken = [p for p in (faces_dir, pairs_file) if os.path.lexists(p)]
    if taken:
        raise OutputError(f"'{taken[0]}' already exists; remove it or choose another --output")
    images = make_face_set(sources, args.seed)
    rows = pairs_rows(list(images))
    try:
        for rel, image in images.items():
            path = os.path.join(faces_dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image.save(path)
        with open(pairs_file, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["a", "b", "mated"])
            writer.writerows(rows)
    except OSError as exc:
        raise OutputError(f"cannot write into '{args.output}' (--output): {exc.strerror or exc}; remove the partial "
                          f"'{faces_dir}' and free space or choose another --output") from None
    mated = sum(r[2] == "1" for r in rows)
    identities = len({p.split("/")[0] for p in images})
    print(f"wrote {len(images)} faces of {identities} identities into {faces_dir} and {len(rows)} pairs "
          f"({mated} mated) into {pairs_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, PROG))
