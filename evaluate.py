"""EDC curves and pAUC of one or more quality scores, the way FIQA papers (and eDifFIQA's) measure them.

    python evaluate.py -c configs/evaluate_config.yaml
    python evaluate.py --pairs pairs.csv --embeddings ArcFace=emb.pkl --scores "eDifFIQA(L)=q_l.pkl" \\
                       --scores "eDifFIQA(T)=q_t.csv" [--fmr 1e-3] [--limits 0.2 0.3] [--output evaluation]
    python evaluate.py --benchmark lfw=lfw.bin --benchmark xqlfw=XQLFW/ --fr ArcFace=arcface_r100.pth \\
                       --method ediffiqaL --method CR-FIQA=crfiqa.pkl --output paper

Pairs mode writes ``<output>/<name>.json`` and ``.csv`` (method, FR model, FMR, threshold, FNMR at 0, pAUC per limit,
raw and normalised) and one EDC figure per FR model (``<name>_<fr model>.png`` and ``.pdf``), and prints the table.
Benchmark mode (``--benchmark NAME=PATH``: an insightface ``.bin`` file or a folder with ``pairs.txt``; images keyed
``NAME/<index>`` or ``NAME/<path>``, which score files name by the key rule of docs/evaluation.md) computes embeddings
(``--fr NAME=CHECKPOINT`` or ``NAME=BACKBONE:CHECKPOINT``) and qualities (``--method VARIANT``, ``VARIANT=WEIGHTS``,
``LABEL=VARIANT:WEIGHTS`` or ``LABEL=SCORES.pkl|.csv|.txt``, a label given again with another scores file for a
file per benchmark) once, cached in ``<output>/cache``, and writes
``<name>.csv``/``.json``/``.md`` (pAUC per method and benchmark, one block per FR model, the mean last) and the grid
``<name>_grid.png``/``.pdf``. Either mode records the files it wrote in ``<name>.files``; a rerun of the name removes
those of the earlier run it does not write again.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

from utils import cli
from utils.cli import Flag
from utils.errors import ConfigError


def _label_files(field: str, flag: str):
    def convert(texts: List[str]) -> List[Dict[str, str]]:
        out = []
        for text in texts:
            if "=" not in text:
                raise ConfigError(f"{flag} takes LABEL=FILE, got {text!r}")
            label, path = text.split("=", 1)
            out.append({"label": label, field: path})
        return out

    return convert


def _name_value(text: str, flag: str, form: str) -> Tuple[str, str]:
    if "=" not in text or not text.split("=", 1)[0] or not text.split("=", 1)[1]:
        raise ConfigError(f"{flag} takes {form}, got {text!r}")
    name, value = text.split("=", 1)
    return name, value


def _benchmarks(texts: List[str]) -> List[Dict[str, str]]:
    out = []
    for text in texts:
        name, path = _name_value(text, "--benchmark", "NAME=PATH (an insightface .bin file or a folder with "
                                 "pairs.txt)")
        out.append({"name": name, "path": path})
    return out


def _fr_models(texts: List[str]) -> List[Dict[str, Optional[str]]]:
    from model.registry import backbone_names

    out = []
    for text in texts:
        label, path = _name_value(text, "--fr", "NAME=CHECKPOINT or NAME=BACKBONE:CHECKPOINT")
        backbone = None
        head, sep, rest = path.partition(":")
        if sep and head in backbone_names():
            backbone, path = head, rest
        elif sep and len(head) > 1 and head.isidentifier() and not os.path.exists(path):
            # BACKBONE:CHECKPOINT with a backbone that does not exist (a drive letter C: is one character)
            raise ConfigError(f"--fr {text!r}: unknown backbone '{head}'; choose one of: "
                              f"{', '.join(backbone_names())} (or leave it out: it is found from the checkpoint; "
                              "layouts not covered: docs/evaluation.md)")
        if not path:
            raise ConfigError(f"--fr {text!r} names no checkpoint; use NAME=CHECKPOINT or NAME=BACKBONE:CHECKPOINT")
        out.append({"label": label, "checkpoint": path, "backbone": backbone})
    return out


#: Endings of files of quality scores (what inference.py writes), as --method/--scores values.
_SCORE_FILES = (".pkl", ".csv", ".txt")
#: Endings of checkpoints: a --method value with one is a variant's weights.
_CHECKPOINTS = (".pth", ".pt")


def _methods(texts: List[str]) -> List[Dict[str, Optional[str]]]:
    """``--method``/``--scores`` values: ``VARIANT``, ``VARIANT=WEIGHTS``, ``LABEL=VARIANT[:WEIGHTS]`` or
    ``LABEL=SCORES.pkl|.csv|.txt``."""
    from model.registry import variant_names

    variants = variant_names()
    form = ("a variant (" + ", ".join(variants) + "), VARIANT=WEIGHTS, LABEL=VARIANT:WEIGHTS or "
            "LABEL=SCORES.pkl|.csv|.txt")
    out = []
    for text in texts:
        if "=" not in text:
            if text not in variants:
                raise ConfigError(f"--method takes {form}, got {text!r}")
            out.append({"model": text})
            continue
        label, value = _name_value(text, "--method", form)
        head, sep, rest = value.partition(":")
        if sep and head in variants:
            if not rest:
                raise ConfigError(f"--method {text!r} names no weights after '{head}:'; use {form}")
            out.append({"label": label, "model": head, "weights": rest})
        elif value in variants:
            out.append({"label": label, "model": value})
        elif label in variants and not value.lower().endswith(_SCORE_FILES):
            out.append({"model": label, "weights": value})
        elif sep and len(head) > 1 and head.isidentifier() and not os.path.exists(value):
            # VARIANT:WEIGHTS with a variant that does not exist (a drive letter C: is one character)
            raise ConfigError(f"--method {text!r}: unknown variant '{head}'; choose one of: {', '.join(variants)}")
        elif value.lower().endswith(_CHECKPOINTS):  # a checkpoint is never a scores file
            raise ConfigError(f"--method {text!r}: unknown variant '{label}' for the weights '{value}'; choose one "
                              f"of: {', '.join(variants)} (VARIANT=WEIGHTS or LABEL=VARIANT:WEIGHTS)")
        else:  # any other file is read as scores, as --scores LABEL=FILE always read it
            out.append({"label": label, "scores": value})
    return out


#: The named flags, each setting one config key (any other key: --set KEY=VALUE).
FLAGS = [
    Flag(("--pairs",), "pairs", "CSV a,b,mated[,similarity] or LFW pairs.txt"),
    Flag(("--embeddings",), "fr_models", "LABEL=FILE of an FR model (repeatable)", append=True,
         convert=_label_files("embeddings", "--embeddings")),
    Flag(("--scores", "--method"), "methods", "a quality method (repeatable): LABEL=FILE of its scores; with "
         "--benchmark also a variant scored here: VARIANT, VARIANT=WEIGHTS or LABEL=VARIANT:WEIGHTS, and a LABEL "
         "given again with another file (one file per benchmark)", append=True,
         convert=_methods),
    Flag(("--benchmark",), "benchmarks", "NAME=PATH of a verification set: an insightface .bin file or a folder "
         "with an LFW-style pairs.txt (repeatable; the pairs file is then not used)", append=True,
         convert=_benchmarks),
    Flag(("--fr",), "fr_models", "with --benchmark: NAME=CHECKPOINT or NAME=BACKBONE:CHECKPOINT of an FR model "
         "(insightface layout; repeatable)", append=True, convert=_fr_models),
    Flag(("--fmr",), "fmr", "target false match rate (1e-3)", type=float),
    Flag(("--limits",), "discard_limits", "pAUC discard limits (0.2 0.3)", type=float, nargs="+"),
    Flag(("--variant",), "variant", "fixed (default) or crfiqa"),
    Flag(("--on-missing",), "on_missing", "fail (default) or drop pairs with a sample lacking data"),
    Flag(("--output",), "output", "folder for the table and figures (./evaluation)"),
    Flag(("--name",), "name", "file name stem (edc)"),
    Flag(("--device",), "device", "with --benchmark: auto, cpu, cuda or cuda:N"),
    Flag(("--batch-size",), "batch_size", "with --benchmark: images per batch (default: per device)", type=int),
    Flag(("-q", "--quiet"), "verbose", "no progress bars or info logs", const=False),
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("evaluate.py", __doc__, FLAGS, "fmr=1e-4")


def main(argv: Optional[List[str]] = None) -> int:
    """Evaluate; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.fr and args.embeddings:
        raise ConfigError("--fr (FR checkpoints, with --benchmark) and --embeddings (embedding files, with --pairs) "
                          "belong to different runs; give one")
    # The workflow (torch, the models) is imported once the command line is read: --help and argument errors
    # answer at once.
    from engine.evaluation.config import EvaluateConfig
    from engine.evaluation.run import evaluate

    cfg = cli.load_script_config(EvaluateConfig, args, FLAGS)
    cli.setup_logging(cfg.verbose)
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main, None, "evaluate.py"))
