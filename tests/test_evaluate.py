"""EDC and pAUC: hand-computed cases, the protocol's sanity properties, and evaluate.py end to end."""
from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import assert_user_error, manifest_state_dict
from PIL import Image

import evaluate
import extract_embeddings
import inference
from engine.evaluation import edc
from utils.cli import run_cli

# Ten comparisons: four non-mated (similarities 0.1 0.2 0.3 0.6) and six mated.
NON_MATED = np.array([0.1, 0.2, 0.3, 0.6])
MATED_SIM = np.array([0.9, 0.25, 0.8, 0.3, 0.7, 0.95])
MATED_Q = np.array([0.5, 0.1, 0.5, 0.5, 0.9, 0.9])  # the failing pair at 0.3 ties with two passing pairs at q=0.5


def test_hand_computed_edc_with_ties() -> None:
    tau = edc.threshold_at_fmr(NON_MATED, 0.25)  # one false match allowed of four: reject 0.3, accept 0.6
    assert 0.3 < tau < 0.3 + 1e-12 and edc.fmr_at(NON_MATED, tau) == 0.25
    curve = edc.fixed_threshold_edc(MATED_SIM, MATED_Q, tau)
    # Failures (sim < tau): 0.25 (q 0.1) and 0.3 (q 0.5). Discard points: k = 0, 1, then 4 (the three q=0.5 leave
    # together), then 1.0.
    np.testing.assert_allclose(curve.discard, [0, 1 / 6, 4 / 6, 1.0])
    np.testing.assert_allclose(curve.fnmr, [2 / 6, 1 / 5, 0 / 2, 0.0])
    assert edc.partial_auc(curve, 0.2) == pytest.approx(2 / 6 * 1 / 6 + 1 / 5 * (0.2 - 1 / 6))
    assert edc.partial_auc(curve, 0.3) == pytest.approx(2 / 6 * 1 / 6 + 1 / 5 * (0.3 - 1 / 6))
    assert edc.partial_auc(curve, 0.5) == pytest.approx(2 / 6 * 1 / 6 + 1 / 5 * (0.5 - 1 / 6))
    assert edc.partial_auc(curve, 1.0) == pytest.approx(2 / 6 * 1 / 6 + 1 / 5 * (4 / 6 - 1 / 6))
    assert edc.partial_auc(curve, 0.2, normalise=True) == pytest.approx(
        (2 / 6 * 1 / 6 + 1 / 5 * (0.2 - 1 / 6)) / (2 / 6 * 0.2))
    assert edc.theoretical_best_pauc(2 / 6, 0.2) == pytest.approx((1 / 3) ** 2 / 2 - (1 / 3 - 0.2) ** 2 / 2)


def test_threshold_reaches_target_fmr() -> None:
    rng = np.random.default_rng(0)
    nonmated = rng.normal(size=20000).round(3)  # many ties
    for fmr in (1e-3, 1e-2, 0.1):
        tau = edc.threshold_at_fmr(nonmated, fmr)
        assert edc.fmr_at(nonmated, tau) <= fmr
        below = np.max(nonmated[nonmated < tau])  # the next lower threshold exceeds the target
        assert edc.fmr_at(nonmated, below) > fmr
    with pytest.raises(ValueError, match="needs at least 1000 non-mated comparisons, got 999"):
        edc.threshold_at_fmr(np.zeros(999), 1e-3)


def _synthetic_scores(n=20000, seed=1):
    rng = np.random.default_rng(seed)
    mated = rng.normal(0.5, 0.15, size=n)
    nonmated = rng.normal(0.0, 0.1, size=n)
    tau = edc.threshold_at_fmr(nonmated, 1e-3)
    return mated, tau, rng


def test_oracle_random_and_reversed_quality() -> None:
    mated, tau, rng = _synthetic_scores()
    fails = mated < tau
    e0 = fails.mean()
    assert 0.05 < e0 < 0.5
    oracle = edc.fixed_threshold_edc(mated, mated, tau)  # similarity as quality: failures are the lowest
    k = np.searchsorted(oracle.discard, e0 - 1e-12)
    assert oracle.fnmr[k] == 0.0 and oracle.fnmr[k - 1] > 0.0
    random_curve = edc.fixed_threshold_edc(mated, rng.uniform(size=len(mated)), tau)
    assert edc.partial_auc(random_curve, 0.3, normalise=True) == pytest.approx(1.0, abs=0.05)
    reversed_curve = edc.fixed_threshold_edc(mated, -mated, tau)
    at_02 = reversed_curve.fnmr[np.searchsorted(reversed_curve.discard, 0.2, side="right") - 1]
    assert at_02 > e0 * 1.2 and edc.partial_auc(reversed_curve, 0.3, normalise=True) > 1.1
    assert edc.partial_auc(oracle, 0.3) == pytest.approx(edc.theoretical_best_pauc(e0, 0.3), rel=0.05)


def test_crfiqa_variant() -> None:
    mated_sim, tau, rng = _synthetic_scores(n=5000)
    nonmated = rng.normal(0.0, 0.1, size=20000)
    sim = np.concatenate([mated_sim, nonmated])
    mated = np.r_[np.ones(5000, bool), np.zeros(20000, bool)]
    q = np.concatenate([mated_sim, rng.uniform(size=20000)])
    curve = edc.crfiqa_edc(sim, mated, q, 1e-3)
    assert len(curve.discard) == 20 and curve.discard[0] == 0 and curve.discard[-1] == pytest.approx(0.95)
    assert curve.fnmr[0] == pytest.approx(np.mean(mated_sim < edc.threshold_at_fmr(nonmated, 1e-3)))
    assert curve.fnmr[-1] < curve.fnmr[0]
    assert edc.partial_auc_trapezoid(curve, 0.2) > 0


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def verification_set(tmp_path_factory, checkpoint_dir, make_faces):
    """Images of 4 identities, two methods' scores from inference.py, iResNet-18 embeddings, pairs."""
    root = tmp_path_factory.mktemp("verif")
    images = make_faces(root / "images", {f"id{i}/{j}.png": 10 * i + j for i in range(4) for j in range(4)})
    for variant in ("ediffiqaT", "ediffiqaS"):
        assert run_cli(inference.main, ["--images", str(images), "--model", variant, "--device", "cpu", "-q",
                                        "--weights", os.path.join(checkpoint_dir, f"{variant}.pth"),
                                        "--output", str(root / variant)], "inference.py") == 0
    backbone = {k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaS").items()
                if k.startswith("base_model.")}
    torch.save(backbone, str(root / "r18.pth"))
    assert run_cli(extract_embeddings.main, ["--images", str(images), "--backbone", "iresnet18", "--weights",
                                             str(root / "r18.pth"), "--output", str(root / "emb.npz"),
                                             "--device", "cpu", "-q"], "extract_embeddings.py") == 0
    rows = []
    files = [f"id{i}/{j}.png" for i in range(4) for j in range(4)]
    for x in range(len(files)):
        for y in range(x + 1, len(files)):
            rows.append((files[x], files[y], int(files[x][:3] == files[y][:3])))
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "mated"])
        writer.writerows(rows)
    return root


def test_evaluate_end_to_end(verification_set, tmp_path, capsys) -> None:
    root = verification_set
    out = tmp_path / "figs"
    argv = ["--pairs", str(root / "pairs.csv"), "--embeddings", f"R18={root / 'emb.npz'}",
            "--scores", f"eDifFIQA(T)={root / 'ediffiqaT' / 'quality-scores.pkl'}",
            "--scores", f"eDifFIQA(S)={root / 'ediffiqaS' / 'quality-scores.csv'}",
            "--fmr", "0.05", "--output", str(out)]
    code = run_cli(evaluate.main, argv, "evaluate.py")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads((out / "edc.json").read_text())
    assert [r["method"] for r in rows] == ["eDifFIQA(T)", "eDifFIQA(S)"]
    assert all(r["mated"] == 24 and r["non_mated"] == 96 for r in rows)
    assert all(0.0 <= r["pauc@0.2"] <= 0.2 and "pauc@0.3_norm" in r for r in rows)
    with open(out / "edc.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == 3
    with open(out / "edc_R18.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out / "edc_R18.png").size[0] > 300
    assert (out / "edc_R18.pdf").read_bytes().startswith(b"%PDF")
    assert "eDifFIQA(T)" in captured.out and "pauc@0.2" in captured.out


@pytest.mark.parametrize("case,pattern", [
    ("missing_embedding", r"1 pairs name 1 images with no embedding .*'id9/0.png'"),
    ("no_mated", r"need mated and non-mated comparisons, have 0 mated"),
    ("fmr_unreachable", r"FMR 0.001 cannot be measured with 96 non-mated comparisons: it needs at least 1000"),
    ("bad_pairs", r"needs the header 'a,b,mated'"),
])
def test_evaluate_errors(case, pattern, verification_set, tmp_path, capsys) -> None:
    root = verification_set
    pairs = tmp_path / "pairs.csv"
    text = (root / "pairs.csv").read_text()
    if case == "missing_embedding":
        text += "id9/0.png,id0/0.png,0\n"
    if case == "no_mated":
        text = "\n".join(line for line in text.splitlines() if not line.endswith(",1")) + "\n"
    if case == "bad_pairs":
        text = "x,y\n1,2\n"
    pairs.write_text(text)
    argv = ["--pairs", str(pairs), "--embeddings", f"R18={root / 'emb.npz'}",
            "--scores", f"T={root / 'ediffiqaT' / 'quality-scores.pkl'}", "--output", str(tmp_path / "o"),
            "--fmr", "0.001" if case == "fmr_unreachable" else "0.05"]
    code = run_cli(evaluate.main, argv, "evaluate.py")
    err = capsys.readouterr().err
    assert_user_error(code, err, "evaluate.py", pattern)
    if case == "missing_embedding":  # the same input passes when dropping is asked for
        assert run_cli(evaluate.main, argv + ["--on-missing", "drop"], "evaluate.py") == 0


def _separable_pairs(tmp_path, n, mated_quality=(0.0, 1.0)):
    """``n`` pairs, the first 200 mated with similarities in [0.5, 1), the others in [-0.2, 0.4), and a quality per
    pair (mated ones in ``mated_quality``); returns evaluate.py's arguments for them."""
    rng = np.random.default_rng(0)
    rows, scores = ["a,b,mated,similarity"], {}
    for i in range(n):
        mated = i < 200
        a, b = f"p{i}/a.png", f"p{i}/b.png"
        rows.append(f"{a},{b},{int(mated)},{rng.uniform(0.5, 1) if mated else rng.uniform(-0.2, 0.4)}")
        scores[a] = scores[b] = rng.uniform(*mated_quality) if mated else rng.uniform(0, 1)
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "q.pkl").write_bytes(pickle.dumps(scores))
    return ["--pairs", str(tmp_path / "pairs.csv"), "--scores", f"q={tmp_path / 'q.pkl'}", "--output",
            str(tmp_path / "out")]


def test_crfiqa_variant_checks_every_discard_level_first(tmp_path, capsys) -> None:
    """1,100 non-mated pairs, the low-quality half of the pairs mostly non-mated: the fixed variant measures FMR
    1e-3 on all 1,100, while the CR-FIQA variant at 30% discard keeps fewer than 1,000; a one-line error."""
    from helpers import run_script

    argv = _separable_pairs(tmp_path, 1300, mated_quality=(0.6, 1))
    assert run_script(evaluate.main, "evaluate.py", argv, capsys)[0] == 0
    code, err = run_script(evaluate.main, "evaluate.py", argv + ["--variant", "crfiqa"], capsys)
    assert_user_error(code, err, "evaluate.py", r"variant crfiqa: discarding 0.\d+ of the pairs by 'q' leaves \d+ "
                                                r"non-mated comparisons, and FMR 0.001 needs at least 1000")


def _perfect_set(tmp_path):
    """Mated pairs all above the threshold: FNMR at 0 discard is 0, so the normalised pAUC is undefined."""
    return _separable_pairs(tmp_path, 1200)


def test_undefined_values_are_null_in_valid_json(tmp_path, capsys) -> None:
    from helpers import run_script

    assert run_script(evaluate.main, "evaluate.py", _perfect_set(tmp_path), capsys)[0] == 0
    text = (tmp_path / "out" / "edc.json").read_text()
    rows = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert rows[0]["fnmr0"] == 0 and rows[0]["pauc@0.2_norm"] is None
    with open(tmp_path / "out" / "edc.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["pauc@0.2_norm"] == ""


@pytest.mark.parametrize("name", ["../../x", "", ".", "..", "a/b", "x\ny", "x\ty"])
def test_name_is_a_plain_file_name(name, tmp_path, capsys) -> None:
    from helpers import run_script

    code, err = run_script(evaluate.main, "evaluate.py", _perfect_set(tmp_path) + ["--name", name], capsys)
    assert_user_error(code, err, "evaluate.py", r"command line \(--name\): 'name' must be a plain file name stem "
                                                r"\(no folder, not empty, no control character\)")
    assert not list(tmp_path.parent.glob("x.*")) and not list((tmp_path / "out").glob(".*"))


def test_a_similarity_column_ignored_for_embeddings_is_said(tmp_path, capsys) -> None:
    """With --embeddings, the pairs file's similarity column (here holding NaNs) is not used: one warning says so,
    and the similarities are the embeddings'."""
    from helpers import run_script

    rng = np.random.default_rng(0)
    names = [f"p{i}/{j}.png" for i in range(10) for j in range(2)]
    (tmp_path / "e.pkl").write_bytes(pickle.dumps({n: rng.normal(size=4).astype(np.float32) for n in names}))
    (tmp_path / "q.pkl").write_bytes(pickle.dumps({n: float(rng.uniform()) for n in names}))
    rows = [f"p{i}/0.png,p{i}/1.png,1,0.9" for i in range(10)]
    rows += [f"p{i}/0.png,p{j}/1.png,0,{'nan' if i == 1 else 0.1}" for i in range(10) for j in range(10) if i != j]
    (tmp_path / "pairs.csv").write_text("a,b,mated,similarity\n" + "\n".join(rows) + "\n")
    argv = ["--pairs", str(tmp_path / "pairs.csv"), "--scores", f"q={tmp_path / 'q.pkl'}", "--fmr", "0.05",
            "--embeddings", f"R={tmp_path / 'e.pkl'}", "--output", str(tmp_path / "out")]
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "similarity column" in line]
    assert len(warnings) == 1 and "pairs.csv': its similarity column is ignored; the similarities are those of the " \
        "embeddings of 'R'" in warnings[0], err
    assert json.loads((tmp_path / "out" / "edc.json").read_text())[0]["fr_model"] == "R"


def test_default_output_is_untracked_the_summary_names_each_file_and_the_legend_has_pauc(tmp_path, capsys,
                                                                                         monkeypatch) -> None:
    """Without --output, evaluate.py writes into ./evaluation (ignored by git; never the repository's tracked
    figures/); the summary names every file written; each EDC legend label carries its curve's pAUC at every
    discard limit, and the legend stands clear of the axes."""
    import matplotlib.pyplot as plt
    from helpers import run_script

    from engine.evaluation.config import EvaluateConfig

    default = os.path.normpath(EvaluateConfig.__dataclass_fields__["output"].default)
    assert default == "evaluation"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, ".gitignore")) as handle:
        assert f"/{default}/" in handle.read().split()
    assert "(./evaluation)" in " ".join(evaluate.build_parser().format_help().split())
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    argv = _perfect_set(tmp_path)[:-2] + ["--limits", "0.2", "0.3"]
    monkeypatch.chdir(tmp_path)
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "evaluation").iterdir())
    assert written == ["edc.csv", "edc.files", "edc.json", "edc_given_similarity.pdf", "edc_given_similarity.png"]
    summary = err.strip().splitlines()[-1]
    assert all(os.path.join("evaluation", name) in summary for name in written), summary
    row = json.loads((tmp_path / "evaluation" / "edc.json").read_text())[0]
    (fig,) = figures
    ax = fig.axes[0]
    (label,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"@0.2: {row['pauc@0.2']:.4f}" in label and f"@0.3: {row['pauc@0.3']:.4f}" in label
    renderer = fig.canvas.get_renderer()
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def _embedded_pairs(tmp_path, collapsed=False):
    """Ten identities of two images: 4-d embeddings (all equal when ``collapsed``: an FR model that does not
    separate anyone), qualities, 10 mated and 90 non-mated pairs; returns evaluate.py's arguments but --embeddings."""
    rng = np.random.default_rng(0)
    names = [f"p{i}/{j}.png" for i in range(10) for j in range(2)]
    centres = rng.normal(size=(10, 4))
    embeddings = {n: (np.ones(4) if collapsed else centres[int(n[1])] + 0.1 * rng.normal(size=4)).astype(np.float32)
                  for n in names}
    (tmp_path / "e.pkl").write_bytes(pickle.dumps(embeddings))
    (tmp_path / "q.pkl").write_bytes(pickle.dumps({n: float(rng.uniform()) for n in names}))
    rows = [f"p{i}/0.png,p{i}/1.png,1" for i in range(10)]
    rows += [f"p{i}/0.png,p{j}/1.png,0" for i in range(10) for j in range(10) if i != j]
    (tmp_path / "pairs.csv").write_text("a,b,mated\n" + "\n".join(rows) + "\n")
    return ["--pairs", str(tmp_path / "pairs.csv"), "--scores", f"q={tmp_path / 'q.pkl'}", "--fmr", "0.05",
            "--output", str(tmp_path / "out")]


def test_fr_labels_that_name_one_figure_are_refused_before_any_work(tmp_path, capsys) -> None:
    """'a b' and 'a_b' (or 'A' and 'a', one file where case is ignored) would write one figure file: one line, and
    the output folder is not even made."""
    from helpers import run_script

    argv = _embedded_pairs(tmp_path)
    for first, second in (("a b", "a_b"), ("A", "a")):
        code, err = run_script(evaluate.main, "evaluate.py", argv + [
            "--embeddings", f"{first}={tmp_path / 'e.pkl'}", "--embeddings", f"{second}={tmp_path / 'e.pkl'}"], capsys)
        assert_user_error(code, err, "evaluate.py", rf"FR models '{first}' and '{second}' would both write the figure "
                                                    r"edc_a_?b?\.png")
    assert not (tmp_path / "out").exists()


def test_a_rerun_of_a_name_replaces_the_files_of_the_earlier_one(tmp_path, capsys) -> None:
    """A rerun with another FR model into the same folder removes the earlier run's figures (recorded in
    edc.files), never a file it did not record (another name's, one planted in the folder, or a name outside the
    folder or not of this name that a tampered record holds) nor a recorded name that is now a link."""
    from helpers import run_script

    argv = _embedded_pairs(tmp_path)
    out = tmp_path / "out"
    assert run_script(evaluate.main, "evaluate.py", argv + ["--embeddings", f"E={tmp_path / 'e.pkl'}"], capsys)[0] == 0
    assert run_script(evaluate.main, "evaluate.py", argv + ["--embeddings", f"G={tmp_path / 'e.pkl'}",
                                                            "--name", "other"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "edc.csv", "edc.files", "edc.json", "edc_E.pdf", "edc_E.png",
        "other.csv", "other.files", "other.json", "other_G.pdf", "other_G.png"]
    (out / "edc_planted.png").write_bytes(b"mine")
    (tmp_path / "victim.png").write_bytes(b"not evaluate's")
    record = json.loads((out / "edc.files").read_text())
    assert record == {"name": "edc", "files": ["edc.json", "edc.csv", "edc_E.png", "edc_E.pdf"], "removing": []}
    record["files"] += ["../victim.png", "other_G.png"]
    (out / "edc.files").write_text(json.dumps(record))
    os.remove(out / "edc_E.pdf")
    os.symlink(tmp_path / "victim.png", out / "edc_E.pdf")
    code, err = run_script(evaluate.main, "evaluate.py", argv + ["--embeddings", f"F={tmp_path / 'e.pkl'}"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "edc.csv", "edc.files", "edc.json", "edc_E.pdf", "edc_F.pdf", "edc_F.png", "edc_planted.png",
        "other.csv", "other.files", "other.json", "other_G.pdf", "other_G.png"]
    assert (out / "edc_E.pdf").is_symlink() and (tmp_path / "victim.png").read_bytes() == b"not evaluate's"
    assert "names 2 files that no run of 'edc' writes (e.g. '../victim.png')" in err, err
    assert "could not remove files of the earlier run of 'edc'" in err and "edc_E.pdf (not a regular file)" in err
    assert json.loads((out / "edc.files").read_text())["removing"] == ["edc_E.pdf"]  # said again by the next run
    assert [r["fr_model"] for r in json.loads((out / "edc.json").read_text())] == ["F"]
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("wrote ") and all(str(out / n) in summary for n in (
        "edc.json", "edc.csv", "edc_F.png", "edc_F.pdf", "edc.files")) and "edc_E" not in summary, summary


def test_an_fr_model_that_separates_nobody_is_one_warning_and_long_labels_keep_the_columns(tmp_path, capsys) -> None:
    """Collapsed embeddings (every similarity 1): the threshold lies above every non-mated similarity and FNMR at 0
    discard is 1; one warning says so. The printed table's columns stay aligned with labels over 20 characters."""
    argv = _embedded_pairs(tmp_path, collapsed=True)
    (tmp_path / "sep").mkdir()
    good = _embedded_pairs(tmp_path / "sep")
    long_method = "published eDifFIQA(T) on the full set"
    argv[argv.index("--scores") + 1] = f"{long_method}={tmp_path / 'q.pkl'}"
    argv += ["--embeddings", f"collapsed FR model with a long name={tmp_path / 'e.pkl'}",
             "--embeddings", f"separating={tmp_path / 'sep' / 'e.pkl'}"]
    assert run_cli(evaluate.main, argv, "evaluate.py") == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "does not separate" in line]
    assert len(warnings) == 1, captured.err
    assert "'collapsed FR model with a long name': threshold 1.0000000" in warnings[0]
    assert "above every non-mated similarity" in warnings[0] and "FNMR at 0 discard 1.0000" in warnings[0]
    assert "separating" not in warnings[0]
    lines = captured.out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("method")))
    table = lines[header:header + 3]
    assert table[1].startswith(long_method + " ") and table[2].startswith(long_method + " ")
    column = table[0].index("FR model")
    assert table[1][column:].startswith("collapsed FR model with a long name ")
    assert table[2][column:].startswith("separating ")
    assert len({len(line) for line in table}) == 1, table  # the number columns line up under their titles
    assert run_cli(evaluate.main, good + ["--embeddings", f"E={tmp_path / 'sep' / 'e.pkl'}"], "evaluate.py") == 0
    assert "does not separate" not in capsys.readouterr().err


def test_two_names_whose_files_collide_are_refused_and_never_remove_each_others(tmp_path, capsys) -> None:
    """--name edc with FR label 'E_F' and --name edc_E with label 'F' both name edc_E_F.png: the second run is one
    line before any work, naming the other name's record; a rerun of the first name never removes a file another
    name's record lists."""
    from helpers import run_script

    argv = _embedded_pairs(tmp_path)
    out = tmp_path / "out"
    emb = tmp_path / "e.pkl"
    assert run_script(evaluate.main, "evaluate.py", argv + ["--embeddings", f"E_F={emb}"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_script(evaluate.main, "evaluate.py", argv + ["--embeddings", f"F={emb}", "--name", "edc_E"],
                           capsys)
    assert_user_error(code, err, "evaluate.py", r"'.*edc_E_F\.png', which this run of 'edc_E' writes, belongs to the "
                                                r"run of 'edc' \(edc\.files\); give this run another --name")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A record of another name that lists a file of this name's record (as a folder from before the check may
    # hold): a rerun of this name that no longer writes it leaves it.
    (out / "mine.files").write_text(json.dumps({"name": "mine", "files": ["edc_E_F.png"], "removing": []}))
    code, err = run_script(evaluate.main, "evaluate.py", argv + ["--embeddings", f"G={emb}"], capsys)
    assert code == 0, err
    assert (out / "edc_E_F.png").read_bytes() == before["edc_E_F.png"] and not (out / "edc_E_F.pdf").exists()
    assert "'edc_E_F.png' of the earlier run of 'edc' is left: another name's record" in err, err


def test_a_file_of_the_user_named_like_an_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    """The user's own edc_E.png in the output folder, which no earlier run of 'edc' recorded, is one line naming it
    and the fix, before any input is read; once a run of the name recorded it, a rerun replaces it."""
    from helpers import run_script

    from engine.evaluation import run as run_module

    argv = _embedded_pairs(tmp_path) + ["--embeddings", f"E={tmp_path / 'e.pkl'}"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "edc_E.png").write_bytes(b"the user's figure")

    def no_reading(*args, **kwargs):
        raise AssertionError("the inputs were read before the output check")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "read_pairs", no_reading)
        code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert_user_error(code, err, "evaluate.py", r"'.*edc_E\.png' exists and no earlier run of 'edc' wrote it; move "
                                                r"it away, or give another --output or --name")
    assert sorted(p.name for p in out.iterdir()) == ["edc_E.png"]
    assert (out / "edc_E.png").read_bytes() == b"the user's figure"
    os.remove(out / "edc_E.png")
    assert run_script(evaluate.main, "evaluate.py", argv, capsys)[0] == 0
    first = (out / "edc_E.png").read_bytes()
    (out / "edc_E.png").write_bytes(b"stale")  # recorded by the earlier run of the name: replaced
    assert run_script(evaluate.main, "evaluate.py", argv, capsys)[0] == 0
    assert (out / "edc_E.png").read_bytes() == first


def test_similarities_within_a_tiny_span_are_said_even_when_the_threshold_meets_a_non_mated_one() -> None:
    """Collapsed embeddings at a coarse FMR on a small set: the threshold may equal the largest non-mated
    similarity and FNMR at 0 discard stay below 0.99; a span of all similarities under 1e-6 is still said."""
    from engine.evaluation.run import COLLAPSED_SPREAD, separation_problem

    rng = np.random.default_rng(1)
    sims = 1.0 - 1e-8 * rng.uniform(size=80)
    mated = np.arange(80) % 2 == 0
    nonmated = sims[~mated]
    tau = float(np.max(nonmated))
    assert separation_problem(nonmated, tau, 0.95) == ""  # the two older tests alone miss it
    assert separation_problem(nonmated, tau, 0.95, sims).startswith("all 80 similarities within 9.")
    assert "collapsed embeddings" in separation_problem(nonmated, tau, 0.95, sims)
    spread = np.linspace(0.0, 2 * COLLAPSED_SPREAD, 80)
    assert separation_problem(spread[~mated], float(np.max(spread[~mated])), 0.5, spread) == ""
