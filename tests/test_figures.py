"""Every run leaves a picture (engine/figures.py): the score sheet of inference.py and diffiqa_score.py, the training
curves of train.py and train_diffusion.py, and prepare_data.py's figure; valid PNGs of the expected sizes, absent when
turned off, and never a change to the files they sit beside."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import assert_user_error, run_script

import inference
from engine import figures


def png_size(path) -> tuple:
    return figures.image_size(open(path, "rb").read())


def inches(size) -> tuple:
    return round(size[0] * figures.DPI), round(size[1] * figures.DPI)


@pytest.fixture()
def faces(tmp_path, make_faces):
    return make_faces(tmp_path / "faces", [f"{i:02d}.png" for i in range(11)])


def args(faces, checkpoint_dir, out, *extra):
    return ["--images", str(faces), "--model", "ediffiqaT", "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"),
            "--output", str(out), "--device", "cpu", "-q", *extra]


def test_inference_draws_the_score_sheet_and_leaves_the_scores_as_they_are(faces, checkpoint_dir, tmp_path, capsys,
                                                                           monkeypatch):
    drawn = []
    real = figures.score_sheet

    def spy(scores, load, n, title):
        drawn.append((dict(scores), n, [load(k).shape for k in sorted(scores, key=scores.get)[:1]]))
        return real(scores, load, n, title)

    monkeypatch.setattr(figures, "score_sheet", spy)
    code, err = run_script(inference.main, "inference.py", args(faces, checkpoint_dir, tmp_path / "with"), capsys)
    assert code == 0, err
    assert png_size(tmp_path / "with" / "quality-scores.png") == inches(figures.score_sheet_size(8))
    scores, n, shapes = drawn[0]
    assert n == 8 and len(scores) == 11 and shapes == [(112, 112, 3)]  # the faces themselves, from every score
    code, err = run_script(inference.main, "inference.py", args(faces, checkpoint_dir, tmp_path / "without",
                                                                "--figure-tiles", "0"), capsys)
    assert code == 0, err
    assert not (tmp_path / "without" / "quality-scores.png").exists()
    for name in ("quality-scores.pkl", "quality-scores.csv"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()
    code, err = run_script(inference.main, "inference.py", args(faces, checkpoint_dir, tmp_path / "three",
                                                                "--figure-tiles", "3"), capsys)
    assert code == 0 and png_size(tmp_path / "three" / "quality-scores.png") == inches(figures.score_sheet_size(3))
    code, err = run_script(inference.main, "inference.py", args(faces, checkpoint_dir, tmp_path / "bad",
                                                                "--figure-tiles", "-1"), capsys)
    assert_user_error(code, err, "inference.py", r"'figure_tiles' must be between 0 \(no figure\) and 64, got -1")


def test_a_figure_that_fails_costs_nothing_but_itself(faces, checkpoint_dir, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(figures, "score_sheet", broken)
    code, err = run_script(inference.main, "inference.py", args(faces, checkpoint_dir, tmp_path / "out"), capsys)
    assert code == 0 and "could not draw quality-scores.png (RuntimeError: no fonts)" in err
    assert (tmp_path / "out" / "quality-scores.pkl").exists() and not (tmp_path / "out" / "quality-scores.png").exists()


def captions(fig) -> list:
    """The score sheet's tile captions (score and file name), in the order drawn: the lowest group, then the
    highest."""
    return [t for t in fig.texts if t.get_gid() == "caption"]


def test_the_sheet_tells_the_lowest_from_the_highest() -> None:
    """The tiles come in the order of the scores, captioned with them: the lowest group first, lowest first; and the
    face drawn above each caption is the face of that key (read off the rendered PNG)."""
    import io

    import numpy as np
    from PIL import Image

    values = [0.5, 0.1, 0.9, 0.3, 0.7]
    scores = {f"/x/{i}.png": float(s) for i, s in enumerate(values)}
    colour = {f"/x/{i}.png": (40 * i, 250 - 40 * i, 90) for i in range(len(values))}
    fig = figures.score_sheet(scores, lambda k: np.full((112, 112, 3), colour[k], np.uint8), 2, "t")
    texts = captions(fig)
    assert [t.get_text() for t in texts] == ["0.1000\n1.png", "0.3000\n3.png", "0.9000\n2.png", "0.7000\n4.png"]
    others = [t.get_text() for t in fig.texts]
    assert any(t.startswith("LOWEST") for t in others) and any(t.startswith("HIGHEST") for t in others)
    buffer = io.BytesIO()
    figures.png_writer(fig)[1](buffer)
    picture = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    height, width = picture.shape[:2]
    for text in texts:
        x, y = text.get_position()  # the caption's top centre, in figure fractions
        shown = picture[round((1 - y) * height) - 40, round(x * width)]  # inside the face, above its caption
        assert tuple(shown) == colour["/x/" + text.get_text().split("\n")[1]], text.get_text()


def test_a_face_that_cannot_be_read_is_a_tile_that_says_so(caplog) -> None:
    """A face that no longer reads is a grey tile saying "(unreadable)" with a warning, and faces of other shapes
    (grey, not square) are drawn fitted into their tile; the sheet is still drawn, at its size."""
    import io

    import numpy as np

    def load(key):
        if key == "gone.png":
            raise OSError("no such file")
        return np.full((80, 120), 200, np.uint8) if key == "grey.png" else np.zeros((112, 112, 3), np.uint8)

    fig = figures.score_sheet({"gone.png": 0.1, "grey.png": 0.2, "face.png": 0.3}, load, 3, "t")
    _, write = figures.png_writer(fig)
    buffer = io.BytesIO()
    write(buffer)
    assert figures.image_size(buffer.getvalue()) == inches(figures.score_sheet_size(3))
    assert sum(t.get_text() == "(unreadable)" for t in fig.texts) == 1  # three faces: two lowest, one highest
    assert "figure: cannot show 'gone.png' (no such file)" in caplog.text


def test_a_sheet_with_fewer_than_twice_the_tiles_shows_each_face_once() -> None:
    """Fewer scores than twice the tiles asked: the faces are split between the lowest and the highest rows (the
    lowest takes the odd one), none in both, and the sheet has the height of what it shows."""
    import numpy as np

    for total, lowest, highest in ((5, 3, 2), (1, 1, 0), (16, 8, 8), (20, 8, 8)):
        scores = {f"{i}.png": i / 10 for i in range(total)}
        fig = figures.score_sheet(scores, lambda k: np.zeros((8, 8, 3), np.uint8), 8, "t")
        names = [t.get_text().split("\n")[1] for t in captions(fig)]
        assert len(names) == lowest + highest and len(set(names)) == len(names), names
        assert names[:lowest] == [f"{i}.png" for i in range(lowest)]
        assert names[lowest:] == [f"{i}.png" for i in range(total - 1, total - 1 - highest, -1)]
        assert tuple(fig.get_size_inches()) == figures.score_sheet_size(8, total)
        groups = [t.get_text() for t in fig.texts if t.get_text().startswith(("LOWEST", "HIGHEST"))]
        assert len(groups) == (lowest > 0) + (highest > 0)
    assert figures.score_sheet_size(8, 1)[1] < figures.score_sheet_size(8)[1]  # one face: one group


def _count_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_ylabel() in ("images", "identities")]


def test_count_axes_have_whole_ticks_and_legends_cover_no_bars() -> None:
    """The histograms of the score sheet and of the preparation figure, drawn on Agg with a few counts (where
    matplotlib would tick 0.5, 1.5): only whole-number count ticks, and no legend overlaps a bar."""
    import numpy as np

    rng = np.random.default_rng(0)
    sheet = figures.score_sheet({f"{i}.png": float(rng.uniform()) for i in range(7)},
                                lambda k: np.zeros((8, 8, 3), np.uint8), 2, "t")
    prep = figures.preparation_figure(rng.uniform(size=9), 0.5, 0.5, np.array([0, 1, 3, 2, 3]), 2,
                                      rng.uniform(size=6), "t")
    for fig, expected in ((sheet, 1), (prep, 3)):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = _count_axes(fig)
        assert len(axes) == expected
        for ax in axes:
            low, high = ax.get_ylim()
            ticks = [t for t in ax.get_yticks() if low <= t <= high]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            bars = [p.get_window_extent(renderer) for p in ax.patches]
            assert bars and not any(box.overlaps(bar) for bar in bars), ax.get_title()


@pytest.mark.parametrize("values", [[0.004482], [-0.25], [0.8] * 3, [0.004482, 0.0044821],
                                    [0.004482, 0.00448205, 0.0044821]])
def test_few_or_close_scores_are_written_out_around_their_values(values) -> None:
    """One face, equal scores or scores 1e-7 apart: the score axis holds every value inside its limits, a single
    value centred in its bar within a few percent of it, and the ticks are plain distinct decimals (no offset such
    as ``1e-7+4.482e-3``); the captions count in the singular for one."""
    import numpy as np

    scores = {f"{i}.png": v for i, v in enumerate(values)}
    fig = figures.score_sheet(scores, lambda k: np.zeros((8, 8, 3), np.uint8), 8, "t")
    fig.canvas.draw()
    (ax,) = _count_axes(fig)
    assert ax.xaxis.get_major_formatter().get_offset() == "" and ax.xaxis.get_offset_text().get_text() == ""
    low, high = ax.get_xlim()
    assert low < min(values) and max(values) < high
    labels = [t.get_text().replace("\u2212", "-") for t, x in zip(ax.get_xticklabels(), ax.get_xticks())
              if low <= x <= high]
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    assert all(abs(float(label) - x) < (high - low) / 100 for label, x in
               zip(labels, [x for x in ax.get_xticks() if low <= x <= high])), labels
    if len(set(values)) == 1:
        (v,) = set(values)
        assert high - low <= 0.2 * max(abs(v), 1e-3)
        data = ax.patches[0].get_data()
        counts, edges = data.values, data.edges
        (bar,) = np.flatnonzero(counts)
        assert counts[bar] == len(values) and edges[bar] < v < edges[bar + 1]
        assert abs((edges[bar] + edges[bar + 1]) / 2 - v) < 1e-9 * max(abs(v), 1)
    count = len(values)
    assert ax.get_title().startswith(f"{count} score:" if count == 1 else f"{count} scores:"), ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    lowest = (count + 1) // 2
    assert legend[0] == ("the lowest is" if lowest == 1 else f"the {lowest} lowest are") + " at or below this", legend


def test_the_sheet_title_counts_one_image_in_the_singular(monkeypatch, tmp_path) -> None:
    """The title of a folder's score sheet: ``1 image``, ``2 images``."""
    import numpy as np

    from engine import resumable

    titles = []
    monkeypatch.setattr(figures, "score_sheet", lambda scores, load, n, title: titles.append(title) or
                        figures._figure((1.0, 1.0)))
    sheet = resumable.ScoreSheet(2, "eDifFIQA quality scores", "ediffiqaT", load=lambda k: np.zeros((8, 8, 3)))
    for table in ({"a.png": 0.5}, {"a.png": 0.5, "b.png": 0.6}):
        assert resumable.sheet_files(str(tmp_path), table, sheet, "faces", "quality scores")
    assert [t.split(" in ")[0] for t in titles] == ["eDifFIQA quality scores of 1 image",
                                                    "eDifFIQA quality scores of 2 images"]
    assert figures.counted(1, "score") == "1 score" and figures.counted(0, "score") == "0 scores"


def test_training_draws_every_epoch_also_after_a_resume(official_set, tmp_path, capsys, monkeypatch):
    from helpers import official_schema_config

    import train

    seen, legends = [], []
    real = figures.training_curves

    def spy(history, title, groups=()):
        seen.append([h["epoch"] for h in history])
        fig = real(history, title, groups)
        legends.append([t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()])
        return fig

    monkeypatch.setattr(figures, "training_curves", spy)
    _, images, data = official_set  # read only
    out = tmp_path / "run"
    cfg = official_schema_config(tmp_path, images, data, out, "ediffiqaT", epochs=1, figure=1)
    assert run_script(train.main, "train.py", ["-c", cfg], capsys)[0] == 0
    assert png_size(out / "train_log.png") == inches(figures.TRAINING_SIZE) and seen == [[1]]
    # The learning-rate panel names what each optimizer group trains (the official groups).
    assert legends[-1][-2:] == ["mlp (head)", "base_model (last 100 tensors)"]
    code, err = run_script(train.main, "train.py", ["-c", cfg, "--epochs", "2", "--resume", str(out / "last.pt")],
                           capsys)
    assert code == 0, err
    assert seen[-1] == [1, 2]  # the resumed run's figure holds the first run's epoch too
    # The summary line names each file of the run.
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("best validation loss") and f"wrote {out / 'model.pth'}, " in summary, summary
    assert all(name in summary for name in ("last.pt", "train_log.csv", "history.json", "config.json",
                                            "train_log.png")), summary
    other = tmp_path / "off"
    cfg = official_schema_config(tmp_path, images, data, other, "ediffiqaT", epochs=1, figure=1)
    code, err = run_script(train.main, "train.py", ["-c", cfg, "--no-figure"], capsys)
    assert code == 0 and "train_log.png" not in err.strip().splitlines()[-1], err
    assert not (other / "train_log.png").exists() and (other / "model.pth").exists()


def test_prepare_data_draws_what_it_did(tmp_path, capsys):
    import pickle

    import numpy as np

    import prepare_data

    rng = np.random.default_rng(0)
    labels = [(f"n{i // 6:03d}/{i % 6}.png", float(rng.uniform())) for i in range(60)]
    embeddings = {p: rng.normal(size=8).astype(np.float32) for p, _ in labels}
    (tmp_path / "l.pkl").write_bytes(pickle.dumps(labels))
    (tmp_path / "e.pkl").write_bytes(pickle.dumps(embeddings))
    base = ["-ll", str(tmp_path / "l.pkl"), "-el", str(tmp_path / "e.pkl"), "-b", "0.5", "--min-images", "2", "-q"]
    code, err = run_script(prepare_data.main, "prepare_data.py", [*base, "-sl", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert png_size(tmp_path / "a" / "prepare_data-ediffiqa.png") == inches(figures.PREPARATION_SIZE)
    names = ["average_embedding_batch-ediffiqa.pkl", "training_items-ediffiqa.pkl", "prepare_data-ediffiqa.json",
             "prepare_data-ediffiqa.png"]
    summary = err.strip().splitlines()[-1]  # the summary line names each file written
    assert f"wrote {tmp_path / 'a' / names[0]}, " in summary and all(name in summary for name in names), summary
    code, err = run_script(prepare_data.main, "prepare_data.py", [*base, "-sl", str(tmp_path / "b"), "--no-figure"],
                           capsys)
    assert code == 0 and names[2] in err and names[3] not in err, err
    assert not (tmp_path / "b" / "prepare_data-ediffiqa.png").exists()
    from tests.official import without_storage_keys  # torch writes a memory address into pickled tensors

    for name in ("average_embedding_batch-ediffiqa.pkl", "training_items-ediffiqa.pkl"):
        a, b = (without_storage_keys((tmp_path / d / name).read_bytes()) for d in "ab")
        assert a == b


def test_the_centre_distances_by_hand() -> None:
    import numpy as np

    from dataset.labels import centre_distances

    got = centre_distances(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), np.array([[3.0, 0.0], [1.0, 0.0],
                                                                                      [-1.0, -1.0]]))
    np.testing.assert_allclose(got, [0.0, 1.0, 2.0], atol=1e-12)


@pytest.mark.slow
def test_diffiqa_labels_and_the_denoiser_draw_theirs(tmp_path, capsys, make_faces) -> None:
    import yaml

    import diffiqa_score
    import train_diffusion
    from model.build import build_backbone
    from model.diffusion import build_diffusion

    torch.manual_seed(0)
    unet = {"dim": 8, "dim_mults": [1, 2, 4, 8], "attn_heads": 1, "attn_dim_head": 8}
    den = build_diffusion(unet, {})
    torch.save({"step": 1, "model": den.state_dict(), "opt": {}, "ema": {}, "scaler": None}, tmp_path / "den.pt")
    torch.save(build_backbone("mobilefacenet").state_dict(), tmp_path / "fr.pth")
    make_faces(tmp_path / "img", 4)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"unet_params": unet}))
    (tmp_path / "fr.yaml").write_text(yaml.safe_dump({"fr_model": {"module": "model.mobilenet.MobileFaceNet",
                                                                   "weights": str(tmp_path / "fr.pth")}}))
    cfg = {"inference": {"repeats": 2, "images_loc": str(tmp_path / "img"),
                         "train_config": str(tmp_path / "train.yaml"), "model_loc": str(tmp_path / "den.pt"),
                         "fr_config": str(tmp_path / "fr.yaml"),
                         "save_loc": str(tmp_path / "labels"), "batch_size": 8, "verbose": 0},
           "base": {"device": "cpu", "figure_tiles": 2}, "dataset": {"num_workers": 0}}
    (tmp_path / "score.yaml").write_text(yaml.safe_dump(cfg))
    code, err = run_script(diffiqa_score.main, "diffiqa_score.py", ["-c", str(tmp_path / "score.yaml")], capsys)
    assert code == 0, err
    assert png_size(tmp_path / "labels" / "quality-scores.png") == inches(figures.score_sheet_size(2))

    tp = {"folder": str(tmp_path / "img"), "train_batch_size": 2, "gradient_accumulate_every": 1, "train_num_steps": 3,
          "save_and_sample_every": 2, "num_samples": 4, "results_folder": str(tmp_path / "den"), "min_image_size": 32,
          "num_workers": 0, "device": "cpu", "log_every": 1, "verbose": False}
    (tmp_path / "den.yaml").write_text(yaml.safe_dump({"unet_params": {"dim": 8, "dim_mults": [1, 2]},
                                                       "diff_params": {"image_size": 32}, "trainer_params": tp}))
    code, err = run_script(train_diffusion.main, "train_diffusion.py", ["-c", str(tmp_path / "den.yaml")], capsys)
    assert code == 0, err
    assert png_size(tmp_path / "den" / "loss_log.png") == inches(figures.DENOISER_SIZE)


def test_drawable_escapes_what_the_font_cannot_show() -> None:
    """Bytes of a name that is not UTF-8 as \\xNN, characters DejaVu Sans lacks as \\uXXXX, control characters
    escaped, ``$`` literal; what the font has stays as it is."""
    assert figures.drawable(os.fsdecode(b"\xff\xfe.jpg")) == "\\xff\\xfe.jpg"
    assert figures.drawable("\u65e5\u672c.jpg") == "\\u65e5\\u672c.jpg"
    assert figures.drawable("a\nb\x00$1$.png") == "a\\nb\\u0000\\$1\\$.png"
    assert figures.drawable("caf\u00e9 \u2026 x.png") == "caf\u00e9 \u2026 x.png"


def test_long_captions_fit_their_tile() -> None:
    """Captions of long names (240 characters, wide letters, names escaped into many more characters: Thai, a
    mathematical letter outside the font, ``$``) are cut in the middle to the framed face's width, measured as drawn:
    no caption reaches into its neighbour's cell, a short name stays whole, and escapes are never cut."""
    import re

    import numpy as np

    names = ["x" * 240 + ".jpg", "\u0e01\u0e49" * 40 + ".jpg", "W" * 60 + ".png", "a.png", "$x$" * 30 + ".jpg",
             "\U0001d518" * 30 + ".png", os.fsdecode(b"\xff" * 50) + ".png", "short name 12.png"]
    scores = {f"/d/{name}": i / 10 for i, name in enumerate(names)}
    fig = figures.score_sheet(scores, lambda key: np.zeros((8, 8, 3), np.uint8), 8, "t")
    renderer = fig.canvas.get_renderer()
    cell = fig.get_size_inches()[0] * figures.DPI / figures.TILES_PER_ROW
    texts = captions(fig)
    assert len(texts) == len(names)  # eight names, eight tiles asked: each shown once
    for text in texts:
        box = text.get_window_extent(renderer)
        column = int(text.get_position()[0] * figures.TILES_PER_ROW)
        assert column * cell < box.x0 and box.x1 < (column + 1) * cell, (text.get_text(), box.x0, box.x1)
        shown = text.get_text().split("\n")[1]
        assert not re.search(r"\\(x[0-9a-f]?|u[0-9a-f]{0,3}|U[0-9a-f]{0,7})(\u2026|$)", shown), shown  # no cut escape
    shown = {t.get_text().split("\n")[1] for t in texts}
    assert {"a.png", "short name 12.png"} <= shown
    assert "x" * 240 + ".jpg" not in shown and any(s.startswith("xxxxxxxxxx") and s.endswith("x.jpg") for s in shown)


def test_any_file_name_is_drawn_and_quiet_prints_only_the_summary(checkpoint_dir, tmp_path, capsys, monkeypatch,
                                                                  make_faces):
    """Names that are not UTF-8 and names the font has no glyphs for: quality-scores.png is written with them
    escaped in its captions, and ``-q`` prints the summary alone (no lost figure, no library warning)."""
    import sys
    import warnings

    root = make_faces(tmp_path / "odd", [os.fsdecode(name) for name in (b"a.jpg", b"\xff\xfe.jpg",
                                                                        "\u65e5\u672c.jpg".encode())])
    # Warnings shown on stderr as a plain run shows them (pytest records them instead).
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
    drawn = []
    real = figures.score_sheet
    monkeypatch.setattr(figures, "score_sheet", lambda *a: drawn.append(real(*a)) or drawn[-1])
    code, err = run_script(inference.main, "inference.py", args(root, checkpoint_dir, tmp_path / "out"), capsys)
    assert code == 0 and len(err.splitlines()) == 1, err
    assert png_size(tmp_path / "out" / "quality-scores.png") == inches(figures.score_sheet_size(3))
    names = {t.get_text().split("\n")[1] for t in captions(drawn[0])}
    assert names == {"a.jpg", "\\xff\\xfe.jpg", "\\u65e5\\u672c.jpg"}


def test_grid_curves_that_coincide_stay_visible_and_fnmr_is_never_negative(tmp_path) -> None:
    """Methods with the same curve are drawn with distinct dash patterns and widths (the first widest and lowest),
    so each shows; a panel whose FNMR is all zero has its axis from 0, not from -0.04."""
    from engine.evaluation.grid import edc_grid, figure_writer

    d = np.linspace(0, 0.3, 7)
    same = (d, np.linspace(0.2, 0.05, 7), [0.04, 0.05])
    zero = (d, np.zeros(7), [0.0, 0.0])
    curves = {("F", "a"): {"T": same, "T2": same, "R": same}, ("F", "b"): {"T": zero, "T2": zero, "R": zero}}
    fig = edc_grid(curves, ["F"], ["a", "b"], 0.1, [0.2, 0.3])
    for ax in fig.axes:
        lines = ax.get_lines()
        assert len(lines) == 3
        styles = {(str(line.get_linestyle()), str(line.get_dashes() if hasattr(line, "get_dashes") else ""),
                   line.get_linewidth()) for line in lines}
        assert len(styles) == 3
        widths = [line.get_linewidth() for line in lines]
        orders = [line.get_zorder() for line in lines]
        assert widths == sorted(widths, reverse=True) and orders == sorted(orders) and len(set(orders)) == 3
        assert ax.get_ylim()[0] == 0
    assert fig.axes[1].get_ylim()[1] > 0
    mode, write = figure_writer(fig, "png")
    with open(tmp_path / "grid.png", mode) as handle:
        write(handle)
