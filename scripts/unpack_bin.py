"""Unpack an insightface verification ``.bin`` file (lfw.bin, cfp_fp.bin, ...) to one image file per image, for
other methods' code that reads image files:

    python -m scripts.unpack_bin lfw.bin unpacked/lfw

writes ``<output>/<index>.jpg`` (``.png`` for an image stored as PNG), each the image's original bytes unchanged
(insightface's ``.bin`` images are already JPEG files), image ``2p`` and ``2p + 1`` being comparison ``p``. Scores
that ``inference.py --images unpacked/lfw`` writes for them are keyed ``unpacked/lfw/<index>.jpg``, which
``evaluate.py --benchmark lfw=lfw.bin`` matches to the images of ``lfw`` (docs/evaluation.md: keys of score files).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from typing import List, Optional

if __name__ == "__main__" and not __package__:
    # Run as a file (python scripts/unpack_bin.py), Python puts scripts/ on sys.path instead of the repository root
    # that holds dataset/; the root makes it run as python -m scripts.unpack_bin does.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from dataset.verification import read_bin
from utils.cli import OneLineParser, run_cli
from utils.errors import DataError
from utils.io import OutputError, check_output_dir

PROG = "python -m scripts.unpack_bin"

#: The file ending of each encoded image format a .bin file holds.
_ENDINGS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def image_ending(data: bytes, what: str) -> str:
    """The file ending of the encoded image ``data`` (``what``: the image, said in a one-line error)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
    except Exception as exc:  # noqa: BLE001 - any undecodable image is one line
        raise DataError(f"{what} is not an image file ({type(exc).__name__}); give an undamaged copy") from None
    if kind not in _ENDINGS:
        raise DataError(f"{what} is a {kind} image, which this script does not name a file ending for")
    return _ENDINGS[kind]


def main(argv: Optional[List[str]] = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("bin", help="the insightface verification file (lfw.bin, ...)")
    parser.add_argument("output", help="folder for <index>.jpg (made; it must hold none of those files)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.bin):
        raise DataError(f"'{args.bin}' is not a file; give an insightface verification file (lfw.bin, ...)")
    data = read_bin("unpacked", args.bin)
    files = []
    for i, item in enumerate(data.images.encoded):  # read_bin's BinImages: each image's bytes
        raw = bytes(item)  # bytes, or a 1-d uint8 array of them
        files.append((f"{i}{image_ending(raw, f'image {i} of {args.bin!r}')}", raw))
    check_output_dir(args.output, "output")
    taken = [name for name, _ in files if os.path.lexists(os.path.join(args.output, name))]
    if taken:
        raise OutputError(f"'{os.path.join(args.output, taken[0])}' already exists; remove it or choose another "
                          "output folder")
    try:
        for name, raw in files:
            with open(os.path.join(args.output, name), "xb") as handle:
                handle.write(raw)
    except OSError as exc:
        raise OutputError(f"cannot write into '{args.output}': {exc.strerror or exc}; free space or choose another "
                          "output folder") from None
    print(f"wrote {len(files)} images ({len(data.issame)} comparisons) into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, PROG))
