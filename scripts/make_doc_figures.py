"""Draw the example figures the docs show (``figures/example-*.png``), one of each script's, with random or
tiny-trained weights, so that they look like what a run leaves, not like results:

    python -m scripts.make_doc_figures [--output figures]

- ``example-quality-scores.png``: ``inference.py`` on ``example_images/`` with random eDifFIQA(T) weights;
- ``example-diffiqa-quality-scores.png``: ``diffiqa_score.py`` on ``example_images/`` with a tiny random denoiser and
  a random MobileFaceNet as the FR model;
- ``example-train_log.png``: ``train.py``, eDifFIQA(T) for 4 epochs on 40 synthetic faces;
- ``example-prepare_data.png``: ``prepare_data.py`` on 400 synthetic labels and embeddings;
- ``example-loss_log.png``: ``train_diffusion.py``, a tiny UNet for 60 steps on synthetic faces.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy(source, target: str) -> None:
    """The docs' copy of a figure, in a 256-colour palette (a third of the size of the run's own PNG)."""
    from PIL import Image

    Image.open(source).convert("RGB").quantize(256).save(target, optimize=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "figures"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import yaml

    import diffiqa_score
    import inference
    import prepare_data
    import train
    import train_diffusion
    from dataset.synthetic import save_image
    from model.build import build_backbone
    from model.diffusion import build_diffusion
    from model.synthetic import manifest_state_dict
    from tests.layouts import official_layout, official_schema_config

    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = pathlib.Path(folder)
        examples = os.path.relpath(os.path.join(ROOT, "example_images"))  # as a user names it in the title

        torch.save(manifest_state_dict("ediffiqaT", seed=1), tmp / "t.pth")
        assert inference.main(["--images", examples, "--model", "ediffiqaT", "--weights", str(tmp / "t.pth"),
                               "--output", str(tmp / "scores"), "--device", "cpu", "-q"]) == 0
        _copy(tmp / "scores" / "quality-scores.png", os.path.join(args.output, "example-quality-scores.png"))

        torch.manual_seed(0)
        unet = {"dim": 8, "dim_mults": [1, 2, 4, 8], "attn_heads": 1, "attn_dim_head": 8}
        torch.save({"step": 1, "model": build_diffusion(unet, {}).state_dict(), "opt": {}, "ema": {}, "scaler": None},
                   tmp / "den.pt")
        torch.save(build_backbone("mobilefacenet").state_dict(), tmp / "fr.pth")
        (tmp / "den.yaml").write_text(yaml.safe_dump({"unet_params": unet}))
        (tmp / "fr.yaml").write_text(yaml.safe_dump({"fr_model": {"module": "model.mobilenet.MobileFaceNet",
                                                                   "weights": str(tmp / "fr.pth")}}))
        (tmp / "labels.yaml").write_text(yaml.safe_dump({
            "inference": {"repeats": 2, "images_loc": examples, "train_config": str(tmp / "den.yaml"),
                          "model_loc": str(tmp / "den.pt"), "fr_config": str(tmp / "fr.yaml"),
                          "save_loc": str(tmp / "labels"), "verbose": 0}, "base": {"device": "cpu"}}))
        assert diffiqa_score.main(["-c", str(tmp / "labels.yaml")]) == 0
        _copy(tmp / "labels" / "quality-scores.png",
                    os.path.join(args.output, "example-diffiqa-quality-scores.png"))

        images, data = official_layout(tmp)
        cfg = official_schema_config(tmp, images, data, tmp / "run", "ediffiqaT", epochs=4, figure=1)
        assert train.main(["-c", cfg]) == 0
        _copy(tmp / "run" / "train_log.png", os.path.join(args.output, "example-train_log.png"))

        rng = np.random.default_rng(0)
        labels = [(f"n{i // 20:03d}/{i % 20:02d}.jpg", float(rng.beta(4, 2))) for i in range(400)]
        centres = rng.normal(size=(20, 64))
        embeddings = {p: (centres[i // 20] + rng.normal(scale=0.8, size=64)).astype(np.float32)
                      for i, (p, _) in enumerate(labels)}
        (tmp / "l.pkl").write_bytes(pickle.dumps(labels))
        (tmp / "e.pkl").write_bytes(pickle.dumps(embeddings))
        assert prepare_data.main(["-ll", str(tmp / "l.pkl"), "-el", str(tmp / "e.pkl"), "-sl", str(tmp / "prep"),
                                  "--min-images", "5", "-q"]) == 0
        _copy(tmp / "prep" / "prepare_data-ediffiqa.png", os.path.join(args.output, "example-prepare_data.png"))

        for i in range(12):
            save_image(str(tmp / "dfaces" / f"{i}.jpg"), seed=i, size=64)
        tp = {"folder": str(tmp / "dfaces"), "train_batch_size": 4, "gradient_accumulate_every": 1,
              "train_num_steps": 60, "save_and_sample_every": 60, "num_samples": 4,
              "results_folder": str(tmp / "den_run"), "min_image_size": 32, "num_workers": 0, "device": "cpu",
              "log_every": 1, "verbose": False, "train_lr": 2e-3}
        (tmp / "dtrain.yaml").write_text(yaml.safe_dump({"unet_params": {"dim": 8, "dim_mults": [1, 2]},
                                                         "diff_params": {"image_size": 32}, "trainer_params": tp}))
        assert train_diffusion.main(["-c", str(tmp / "dtrain.yaml")]) == 0
        _copy(tmp / "den_run" / "loss_log.png", os.path.join(args.output, "example-loss_log.png"))
    print(f"wrote the example figures into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
