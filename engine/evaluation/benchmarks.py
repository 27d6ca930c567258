"""``evaluate.py --benchmark``: the paper's evaluation in one run. Every benchmark (an insightface ``.bin`` file or an
image folder with ``pairs.txt``, :mod:`dataset.verification`) is embedded by every FR checkpoint and scored by every
quality method (a variant scored here through the scorer ``inference.py`` uses, or a file of another method's scores
keyed ``NAME/<index>``), each once and cached (:mod:`engine.evaluation.cache`); then the fixed-threshold FNMR-EDC and
pAUC of every benchmark x FR model x method (:mod:`engine.evaluation.edc`), written as one set: the table as CSV,
JSON and Markdown and the grid figure (:mod:`engine.evaluation.grid`) as PNG and PDF."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from dataset.keys import normal_key, unmatched_message
from dataset.verification import Benchmark as BenchmarkSet
from dataset.verification import BinImages, benchmark_batches, check_images, match_benchmark_keys, read_benchmark
from engine.evaluation import cache, edc
from engine.evaluation.config import Benchmark, EvaluateConfig, FRModel, Method
from engine.evaluation.data import read_qualities
from engine.evaluation.grid import edc_grid, figure_writer
from engine.evaluation.outputs import check_outputs, write_outputs
from engine.evaluation.run import check_counts, edc_results, output_files, separation_problem, warn_unseparated
from engine.scoring.embeddings import embedding_forward
from engine.scoring.scorer import QualityScorer, default_batch_size
from engine.scoring.weights import resolve_weights
from model.checkpoint import check_checkpoint, fr_backbone_of, load_fr_backbone
from model.registry import VARIANTS
from utils.config import short
from utils.errors import CheckpointError, DataError
from utils.io import OutputError, check_output_dir, csv_writer, file_list, json_writer, sha256_of, values_digest
from utils.runtime import resolve_device

__all__ = ["CACHE_FOLDER", "source_fingerprint", "evaluate_benchmarks"]

_logger = logging.getLogger(__name__)

#: The cache's folder inside the output folder.
CACHE_FOLDER = "cache"


def source_fingerprint(bench: Benchmark, data: BenchmarkSet) -> Dict[str, Any]:
    """What identifies a benchmark's images: a ``.bin`` file's size and SHA-256; for a folder, the SHA-256 of its
    pairs file and of every image's relative path, size and modification time."""
    if not os.path.isdir(bench.path) and not bench.path.lower().endswith(".txt"):
        return {"file": os.path.basename(bench.path), "size": os.path.getsize(bench.path),
                "sha256": sha256_of(bench.path)}
    root = bench.path if os.path.isdir(bench.path) else os.path.dirname(bench.path) or "."
    digest = hashlib.sha256()
    for key in data.keys:
        rel = key[len(bench.name) + 1:]
        info = os.stat(os.path.join(root, rel))
        digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"pairs": os.path.basename(data.path), "pairs_sha256": sha256_of(data.path),
            "images_sha256": digest.hexdigest()}


@dataclass
class _Source:
    """A benchmark read, with its record (what its cache files must have been computed from)."""

    bench: Benchmark
    data: BenchmarkSet
    record: Dict[str, Any]
    files: Dict[str, np.ndarray]   # (N,) qualities of each method given as a file of scores
    keep: np.ndarray               # (P,) the comparisons whose images have every quality


def _map_batches(data: BenchmarkSet, device: torch.device, batch_size: int, forward: Callable[[torch.Tensor],
                 torch.Tensor], what: str, verbose: bool) -> np.ndarray:
    """``forward`` over the benchmark's images in order, batched as folder scoring batches them: ``(N, ...)``."""
    chunks: List[np.ndarray] = []
    start = time.perf_counter()
    with tqdm(total=len(data.keys), unit="img", disable=not verbose, dynamic_ncols=True, desc=what) as bar:
        for indices, x, bad in benchmark_batches(data.images, batch_size, device=device):
            if bad:  # a comparison without its image cannot be counted: the benchmark is damaged
                index, reason = bad[0]
                raise DataError(f"benchmark '{data.name}' ('{data.path}'): {len(bad)} image(s) of a batch cannot be "
                                f"decoded, e.g. {data.keys[index]} ({reason}); give an undamaged copy")
            if len(indices):
                chunks.append(forward(x).detach().float().cpu().numpy())
            bar.update(len(indices))
    seconds = time.perf_counter() - start
    _logger.info("%s: %d images in %.1f s (%.1f images/s)", what, len(data.keys), seconds,
                 len(data.keys) / seconds if seconds > 0 else float("nan"))
    return np.concatenate(chunks)


def _file_qualities(label: str, paths: List[str], source: _Source, problems: List[str], names: List[str],
                    read: Dict[str, Dict[str, float]]) -> Tuple[str, List[str]]:
    """Read a method's scores for the benchmark's images into ``source.files`` (NaN where absent), the keys of its
    file matched by :func:`dataset.verification.match_benchmark_keys` (``names``: the run's benchmarks; ``read``:
    the files read so far, each read once). Of a method given as several files (one per benchmark), the one file
    whose keys name images of this benchmark is used, one keyed below a folder named as the benchmark before others.
    Pairs with an absent image are left out of ``source.keep`` and said in ``problems``. Returns the file used and
    those set aside for it (they name its images by index or path alone)."""
    data = source.data
    chosen: List[Tuple[str, List[Optional[str]]]] = []
    refused: List[str] = []
    for path in paths:
        if path not in read:
            read[path] = read_qualities(path)
        file = f"quality file '{path}'"
        try:
            found = match_benchmark_keys(data, list(read[path]), file, names)
            _refuse_another_set(data, found, file)
        except DataError as exc:
            if len(paths) == 1:
                raise
            refused.append(str(exc))  # another set's file: it serves another benchmark
            continue
        if len(paths) == 1 or any(k is not None for k in found):
            chosen.append((path, found))
    if not chosen:
        raise DataError(f"none of the {len(paths)} quality files of method '{label}' names images of benchmark "
                        f"'{data.name}' (keys {data.keys[0]}, ...): give its file (docs/evaluation.md: keys of score "
                        f"files){f'; e.g. {refused[0]}' if refused else ''}")
    aside: List[str] = []
    if len(chosen) > 1:  # files keyed below a folder named as the benchmark name it; the others serve another
        named = [c for c in chosen if any(k is not None and data.name in normal_key(k).split("/")[:-1]
                                          for k in c[1])]
        if named:
            aside = [c[0] for c in chosen if c not in named]
            chosen = named
    if len(chosen) > 1:
        raise DataError(f"quality files '{chosen[0][0]}' and '{chosen[1][0]}' of method '{label}' both name images of "
                        f"benchmark '{data.name}': with one file per benchmark, key each file's images below a folder "
                        "named as its benchmark (unpacked/lfw/17.jpg), or give one file of all sets")
    path, found = chosen[0]
    scores = read[path]
    values = np.array([scores[k] if k is not None else math.nan for k in found], dtype=np.float64)
    if any(k is None for k in found):
        bad = np.isnan(values[data.left]) | np.isnan(values[data.right])
        source.keep &= ~bad
        problems.append(f"benchmark '{data.name}': {int(bad.sum())} pairs lack a quality; "
                        + unmatched_message(data.keys, found, scores, f"benchmark '{data.name}'",
                                            f"quality file '{path}'", "images")
                        + " (docs/evaluation.md: keys of score files)")
    source.files[label] = values
    return path, aside


#: A key of a .bin file's image in this tool's form, ``NAME/<index>`` (after any folders): the set and the index.
_SET_KEY = re.compile(r"(?:.*/)?([^/]+)/(\d+)")


def _refuse_another_set(data: BenchmarkSet, found: List[Optional[str]], file: str) -> None:
    """A :class:`DataError` when every key of a score file that names an image of the ``.bin`` benchmark ``data`` is
    ``SET/<index>`` with one ``SET`` other than ``data.name`` (matched relative to that folder): the scores of
    another set's images, which would be given to these by their index alone."""
    if not isinstance(data.images, BinImages):
        return
    sets = set()
    for key in found:
        if key is not None:
            match = _SET_KEY.fullmatch(normal_key(key))
            if match is None:
                return  # a file name (unpacked images, 00017.png) or another layout: no set named
            sets.add(match.group(1))
    if len(sets) == 1 and data.name not in sets:
        other = next(iter(sets))
        example = next(k for k in found if k is not None)
        raise DataError(f"{file} keys the images of set '{other}' ({short(example)}, ...), not of benchmark "
                        f"'{data.name}'; give the scores of '{data.name}' (keys {data.keys[0]}, ...), or name the "
                        f"benchmark '{other}' if they are its images (--benchmark {other}=PATH; docs/evaluation.md: "
                        "keys of score files)")


def evaluate_benchmarks(cfg: EvaluateConfig) -> List[Dict[str, Any]]:
    """Run the evaluation of ``cfg.benchmarks`` (see the module's docstring); returns the long rows (one per
    benchmark x FR model x method)."""
    check_output_dir(cfg.output, "output / --output")
    folder = os.path.join(cfg.output, CACHE_FOLDER)
    if os.path.islink(folder):  # its files would be written wherever it points
        raise OutputError(f"'{folder}' is a link where the cache folder of output '{cfg.output}' goes; remove the "
                          "link (the cache is written inside the output folder), or choose another --output")
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(f"'{folder}' is a file where the cache folder of output '{cfg.output}' goes; move it out "
                          "of the way, or choose another --output")
    check_output_dir(folder, "output / --output")
    check_outputs(cfg.output, cfg.name, output_files(cfg))
    device = resolve_device(cfg.device)
    batch_size = cfg.batch_size or default_batch_size(device)
    settings = {"batch_size": batch_size, "device": device.type,
                # the thread count changes the last bits of CPU results
                "threads": torch.get_num_threads() if device.type == "cpu" else None}
    # Everything that can be wrong with the inputs is found before any image is embedded.
    sources: List[_Source] = []
    problems: List[str] = []
    score_files: Dict[str, Dict[str, float]] = {}
    file_methods: Dict[str, List[str]] = {}  # a method's scores files, one or one per benchmark
    for method in cfg.methods:
        if method.model is None:
            file_methods.setdefault(method.label or "", []).append(method.scores or "")
    used: List[str] = []  # the files that served a benchmark
    aside: Dict[str, List[str]] = {}  # the benchmarks a file was set aside for
    for bench in cfg.benchmarks:
        data = read_benchmark(bench.name, bench.path)
        check_images(data)  # every damaged image said at once, before any model runs
        record = {"benchmark": bench.name, "source": source_fingerprint(bench, data), "keys": len(data.keys),
                  "keys_sha256": values_digest(np.array(data.keys)), **settings}
        source = _Source(bench, data, record, {}, np.ones(len(data.issame), dtype=bool))
        for label, paths in file_methods.items():
            path, others = _file_qualities(label, paths, source, problems, [b.name for b in cfg.benchmarks],
                                           score_files)
            used.append(path)
            for other in others:
                aside.setdefault(other, []).append(bench.name)
        sources.append(source)
    for label, paths in file_methods.items():
        idle = [p for p in paths if p not in used]
        set_aside = [p for p in idle if p in aside]
        if set_aside:  # it names images only by index or path, where another file of the method names them by set
            raise DataError(f"quality file '{set_aside[0]}' of method '{label}' names the images of benchmark(s) "
                            f"{', '.join(aside[set_aside[0]])} only by index or path, and another of its "
                            "files names them below a folder named as the benchmark; key each file below a folder "
                            "named as its benchmark (unpacked/lfw/17.jpg), or leave it out")
        if idle:  # a file meant for a set not given, or keyed so that it names none
            raise DataError(f"quality file '{idle[0]}' of method '{label}' names images of none of the benchmarks "
                            f"({', '.join(b.name for b in cfg.benchmarks)}); give the benchmark it belongs to, or "
                            "leave the file out")
    if problems:
        if cfg.on_missing == "fail":
            raise DataError("; ".join(problems) + "; fix the scores or set on_missing: drop (--on-missing drop)")
        for p in problems:
            _logger.warning("%s: those pairs are dropped", p)
    for source in sources:  # the counts need only the pairs (and the scores files): checked before any model runs
        data, keep = source.data, source.keep
        check_counts(np.asarray(data.issame, dtype=bool)[keep],
                     {label: np.minimum(v[data.left], v[data.right])[keep] for label, v in source.files.items()},
                     cfg, where=f"benchmark '{data.name}': ", dropped=int((~keep).sum()))
    fr_sha = {fr.label: _checkpoint_sha(fr) for fr in cfg.fr_models}
    fr_backbone = {fr.label: fr_backbone_of(fr.checkpoint or "", fr.backbone) for fr in cfg.fr_models}
    for fr in cfg.fr_models:
        _logger.info("FR model '%s': %s%s, '%s' (SHA-256 %s)", fr.label, fr_backbone[fr.label],
                     " (found from the checkpoint's keys and shapes)" if fr.backbone is None else "", fr.checkpoint,
                     fr_sha[fr.label][:12])
    method_weights = {m.label: _method_weights(m, cfg.verbose) for m in cfg.methods if m.model is not None}
    method_sha = {label: sha256_of(path) for label, path in method_weights.items()}
    cache.check_entries([cache.cache_file(folder, kind, source.bench.name, model, sha) for source in sources
                         for kind, model, sha in [("embeddings", fr.backbone or "fr", fr_sha[fr.label])
                                                  for fr in cfg.fr_models]
                         + [("qualities", m.model, method_sha[m.label]) for m in cfg.methods if m.model]])

    nets: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    scorers: Dict[str, QualityScorer] = {}

    def embed(fr: FRModel) -> Callable[[torch.Tensor], torch.Tensor]:
        if fr.label not in nets:  # loaded once, and only when some benchmark is not cached
            net = load_fr_backbone(fr.checkpoint or "", fr_backbone[fr.label], warn=False)  # warned above
            nets[fr.label] = embedding_forward(net.to(device).to(memory_format=torch.channels_last),
                                               fr.checkpoint or "")
        return nets[fr.label]

    def scorer(method: Method) -> QualityScorer:
        if method.label not in scorers:  # as inference.py builds it: torch, fp32, BatchNorm folded
            scorers[method.label] = QualityScorer.from_pretrained(method.model or "", method_weights[method.label],
                                                                  device=device, progress=cfg.verbose)
        return scorers[method.label]

    rows: List[Dict[str, Any]] = []
    panels: Dict[Tuple[str, str], Dict[str, Any]] = {}
    unseparated: List[str] = []
    for source in sources:
        bench, data = source.bench, source.data
        embeddings = {}
        for fr in cfg.fr_models:
            record = {**source.record, "kind": "embeddings", "backbone": fr.backbone,
                      "weights_sha256": fr_sha[fr.label]}
            path = cache.cache_file(folder, "embeddings", bench.name, fr.backbone or "fr", fr_sha[fr.label])
            embeddings[fr.label] = cache.cached(path, record, lambda fr=fr, data=data, what=bench.name: _map_batches(
                data, device, batch_size, embed(fr), f"{what}: {fr.label} embeddings", cfg.verbose))
        qualities: Dict[str, np.ndarray] = {}
        for method in cfg.methods:
            if method.model is None:
                values = source.files[method.label or ""]
            else:
                sha = method_sha[method.label]
                record = {**source.record, "kind": "qualities", "model": method.model, "weights_sha256": sha,
                          "precision": "fp32", "backend": "torch", "fold_bn": True}
                path = cache.cache_file(folder, "qualities", bench.name, method.model, sha)
                values = cache.cached(path, record, lambda method=method, data=data, what=bench.name: _map_batches(
                    data, device, batch_size, scorer(method), f"{what}: {method.label} qualities", cfg.verbose))
                values = values.astype(np.float64)
            qualities[method.label] = np.minimum(values[data.left], values[data.right])
        keep = source.keep
        mated = np.asarray(data.issame, dtype=bool)[keep]
        kept = {label: q[keep] for label, q in qualities.items()}
        n_mated, n_non = check_counts(mated, kept, cfg, where=f"benchmark '{bench.name}': ",
                                      dropped=int((~keep).sum()))
        for fr in cfg.fr_models:
            sims = edc.cosine_similarities(embeddings[fr.label], data.left[keep], data.right[keep])
            tau, results = edc_results(sims, mated, kept, cfg)
            problem = separation_problem(sims[~mated], tau, next(iter(results.values()))[1]["fnmr0"], sims)
            if problem:
                unseparated.append(f"{fr.label!r} on '{bench.name}': {problem}")
            panel = panels.setdefault((fr.label, bench.name), {})
            for label, (curve, stats) in results.items():
                panel[label] = (curve.discard, curve.fnmr, [stats[f"pauc@{d:g}"] for d in cfg.discard_limits])
                rows.append({"benchmark": bench.name, "fr_model": fr.label, "method": label,
                             "variant": cfg.variant, "fmr": cfg.fmr, "threshold": tau, "mated": n_mated,
                             "non_mated": n_non, **stats,
                             **{f"best_pauc@{d:g}": edc.theoretical_best_pauc(stats["fnmr0"], d)
                                for d in cfg.discard_limits}})
    inputs = {"fr_models": [{"label": fr.label, "checkpoint": fr.checkpoint, "backbone": fr_backbone[fr.label],
                             "sha256": fr_sha[fr.label]} for fr in cfg.fr_models],
              "methods": [{"label": label, "scores": paths} for label, paths in file_methods.items()]
              + [{"label": m.label, "model": m.model, "weights": method_weights[m.label or ""],
                  "weights_sha256": method_sha[m.label or ""]} for m in cfg.methods if m.model is not None]}
    _write_results(cfg, rows, panels, unseparated, inputs)
    return rows


def _checkpoint_sha(fr: FRModel) -> str:
    path = fr.checkpoint or ""
    if not os.path.isfile(path):
        raise CheckpointError(f"FR model '{fr.label}': checkpoint '{path}' not found; give its insightface "
                              "checkpoint with --fr NAME=CHECKPOINT")
    return sha256_of(path)


def _method_weights(method: Method, verbose: bool) -> str:
    """The checkpoint of a method scored here (:func:`engine.scoring.weights.resolve_weights`); a file the user named
    is checked now, before any image is embedded: it exists and holds the variant's weights."""
    path = resolve_weights(method.model or "", method.weights, progress=verbose)
    if method.weights:
        title = VARIANTS[method.model or ""].title
        if not os.path.isfile(path):
            raise CheckpointError(f"--method '{method.label}': weights file '{path}' "
                                  f"{'is a folder' if os.path.isdir(path) else 'not found'}; give the {title} "
                                  f"checkpoint with --method {method.model}=WEIGHTS or LABEL={method.model}:WEIGHTS")
        check_checkpoint(path, method.model or "", f"--method '{method.label}': weights file '{path}'",
                         fix=f"use --method {{held}}={path}")
    return path


def table(cfg: EvaluateConfig, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The wide table: per FR model and pAUC limit, one row per method with a column per benchmark and the mean over
    benchmarks last."""
    benches = [b.name for b in cfg.benchmarks]
    index = {(r["fr_model"], r["method"], r["benchmark"]): r for r in rows}
    out = []
    for fr in cfg.fr_models:
        for limit in cfg.discard_limits:
            metric = f"pauc@{limit:g}"
            for label in cfg.method_labels():
                values = [index[(fr.label, label, b)][metric] for b in benches]
                out.append({"fr_model": fr.label, "metric": metric, "method": label,
                            **dict(zip(benches, values)), "mean": statistics.fmean(values)})
    return out


def _cell(text: str) -> str:
    """``text`` as a cell of a Markdown table: ``|`` (which would end the cell) and ``\\`` escaped."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown(cfg: EvaluateConfig, wide: List[Dict[str, Any]]) -> str:
    """The wide table as Markdown: a block per FR model and pAUC limit."""
    benches = [b.name for b in cfg.benchmarks]
    lines = [f"# pAUC of the {'fixed-threshold' if cfg.variant == 'fixed' else 'CR-FIQA'} FNMR-EDC at FMR "
             f"{cfg.fmr:g} (lower is better)", ""]
    for fr in cfg.fr_models:
        for limit in cfg.discard_limits:
            block = [r for r in wide if r["fr_model"] == fr.label and r["metric"] == f"pauc@{limit:g}"]
            lines += [f"## {fr.label}: pAUC at discard {limit:g}", "",
                      "| method | " + " | ".join(benches) + " | mean |",
                      "|---|" + "---:|" * (len(benches) + 1)]
            lines += ["| " + _cell(r["method"]) + " | " + " | ".join(f"{r[b]:.5g}" for b in [*benches, "mean"]) + " |"
                      for r in block]
            lines.append("")
    return "\n".join(lines)


def _write_results(cfg: EvaluateConfig, rows: List[Dict[str, Any]], panels: Dict[Tuple[str, str], Any],
                   unseparated: List[str], inputs: Dict[str, Any]) -> None:
    """The table (CSV, JSON, Markdown) and the grid figure (PNG, PDF), as one set (the files of an earlier run of
    the name that this one does not write removed: :func:`engine.evaluation.outputs.write_outputs`); ``inputs``:
    the FR models (backbone, SHA-256) and methods (files, or weights and SHA-256) the JSON records."""
    wide = table(cfg, rows)
    text = markdown(cfg, wide)
    stem = cfg.name
    header = ["fr_model", "metric", "method", *[b.name for b in cfg.benchmarks], "mean"]
    files = [(f"{stem}.json", json_writer({"fmr": cfg.fmr, "variant": cfg.variant, "discard_limits":
                                           cfg.discard_limits, **inputs, "table": wide, "results": rows})),
             (f"{stem}.csv", csv_writer(header, ([r[h] for h in header] for r in wide))),
             (f"{stem}.md", ("w", lambda handle: handle.write(text)))]
    figure: Optional[Any] = None
    try:
        figure = edc_grid(panels, [f.label for f in cfg.fr_models], [b.name for b in cfg.benchmarks], cfg.fmr,
                          cfg.discard_limits, stepwise=cfg.variant == "fixed")
        files += [(f"{stem}_grid.{fmt}", figure_writer(figure, fmt)) for fmt in ("png", "pdf")]
    except Exception as exc:  # noqa: BLE001 - fonts, memory: the figure is left out, never the table
        _logger.warning("could not draw %s_grid (%s: %s); the table is written without it", cfg.name,
                        type(exc).__name__, exc)
    written = write_outputs(cfg.output, cfg.name, files)
    print(text)
    warn_unseparated(unseparated)
    print(f"wrote {file_list(written)}", file=sys.stderr)
