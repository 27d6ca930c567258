"""Draw ``figures/degradations.png``: a face and BSRGAN-degraded training inputs of the DifFIQA denoiser.

    python -m scripts.make_degradation_figure [--image example_images/astronaut.png] [--seed 0] [--n 7]

Each degraded copy is what ``train_diffusion.py`` feeds the denoiser (one to three BSRGAN passes, 112x112), drawn
from ``numpy.random.default_rng([seed, k])``: the figure is the same on every run.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.path.join(ROOT, "example_images", "astronaut.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=7)
    parser.add_argument("--output", default=os.path.join(ROOT, "figures", "degradations.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from dataset.diffusion_data import DegradationPairs
    from utils.io import atomic_open

    image = Image.open(args.image).convert("RGB")
    pairs = DegradationPairs(os.path.dirname(args.image), [os.path.basename(args.image)], 112, args.seed, flip=False)
    degraded = [pairs.pair(image, np.random.default_rng([args.seed, k]))[1] for k in range(args.n)]
    fig, axes = plt.subplots(1, args.n + 1, figsize=(1.6 * (args.n + 1), 2.0))
    axes[0].imshow(np.asarray(image.resize((112, 112), Image.Resampling.BILINEAR)))
    axes[0].set_title("clean", fontsize=9)
    for k, (ax, img) in enumerate(zip(axes[1:], degraded)):
        ax.imshow(img)
        ax.set_title(f"degraded #{k + 1}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("BSRGAN degradations (scale 4, 512 px in, 112 px out) used to train the DifFIQA denoiser",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with atomic_open(args.output, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
