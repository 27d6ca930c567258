"""Model zoo: official key layout, strict loading, forward shapes, variant detection."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, assert_user_error, load_manifest, manifest_state_dict, run_script

import inference
from model import EDifFIQA, build_model, create_model, identify_variant, read_state_dict
from model.checkpoint import expected_shapes
from model.registry import VARIANTS, variant_names
from utils.errors import CheckpointError, ConfigError

VARIANT_NAMES = variant_names("ediffiqa")
PARAMS_M = {"ediffiqaL": 65.68, "ediffiqaM": 44.12, "ediffiqaS": 24.55, "ediffiqaT": 1.73}


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_state_dict_matches_official_manifest(variant: str) -> None:
    expected = [(k, tuple(s)) for k, s, _ in load_manifest()[variant]]
    assert list(expected_shapes(variant).items()) == expected


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_parameter_count_matches_paper(variant: str) -> None:
    with torch.device("meta"):
        model = build_model(variant)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PARAMS_M[variant]


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_strict_load_of_manifest_checkpoint(variant: str, checkpoint_dir: str) -> None:
    path = os.path.join(checkpoint_dir, f"{variant}.pth")
    model = create_model(variant, path)
    expected = torch.load(path, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not model.training


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_forward_shapes_and_return_feat(variant: str, checkpoint_dir: str) -> None:
    model = create_model(variant, os.path.join(checkpoint_dir, f"{variant}.pth"))
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        quality = model(x)
        model.return_feat = True
        feat, quality2 = model(x)
        one = model(x[:1])[1]
    assert quality.shape == (2, 1) and feat.shape == (2, 512)
    assert torch.isfinite(quality).all() and torch.isfinite(feat).all()
    assert torch.allclose(quality, quality2)
    assert one.shape == (1, 1)
    assert torch.allclose(one, quality[:1], rtol=1e-4, atol=1e-5)
    norms = feat.norm(dim=1)
    if variant == "ediffiqaT":  # MobileFaceNet embeddings are L2-normalised, iResNet ones are not
        assert torch.allclose(norms, torch.ones(2), atol=1e-5)
    else:
        assert not torch.allclose(norms, torch.ones(2), atol=1e-2)


def test_wrapper_uses_backbone_then_head() -> None:
    backbone = torch.nn.Flatten()
    head = torch.nn.Linear(2, 1)
    model = EDifFIQA(backbone, head, return_feat=True)
    x = torch.tensor([[[[1.0, 2.0]]]])
    feat, quality = model(x)
    assert torch.equal(feat, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(quality, head(feat))


def test_prefixes_are_stripped(tmp_path) -> None:
    sd = manifest_state_dict("ediffiqaT")
    path = str(tmp_path / "ddp.pth")
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    loaded = read_state_dict(path)
    assert set(loaded) == set(sd)
    model = create_model("ediffiqaT", path)
    assert torch.equal(model.mlp.l2.weight, sd["mlp.l2.weight"])


def test_identify_variant() -> None:
    for variant in VARIANT_NAMES:
        with torch.device("meta"):
            sd = build_model(variant).state_dict()
        assert identify_variant(sd) == variant
    assert identify_variant({"x": torch.zeros(1)}) is None


def test_wrong_variant_is_refused_naming_the_variant(checkpoint_dir: str) -> None:
    with pytest.raises(CheckpointError, match=r"holds eDifFIQA\(T\) \('ediffiqaT'\), not eDifFIQA\(S\)"):
        create_model("ediffiqaS", os.path.join(checkpoint_dir, "ediffiqaT.pth"))


def test_bare_backbone_is_refused(tmp_path) -> None:
    sd = {k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaS").items() if k.startswith("base_")}
    path = str(tmp_path / "r18.pth")
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="bare iresnet18 backbone"):
        create_model("ediffiqaS", path)


def test_partial_checkpoint_reports_missing_keys(tmp_path) -> None:
    sd = manifest_state_dict("ediffiqaT")
    del sd["mlp.l2.bias"]
    sd["mlp.l2.weight"] = torch.zeros(2, 1024)
    path = str(tmp_path / "partial.pth")
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e.g. mlp.l2.bias\).*1 shape mismatches"):
        create_model("ediffiqaT", path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_carrying_checkpoint_is_refused(tmp_path) -> None:
    path = str(tmp_path / "evil.pth")
    torch.save({"x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="could run code when loaded") as info:
        read_state_dict(path)
    assert "weights_only=False" not in str(info.value)  # torch's advice, which users must not follow
    zeros = tmp_path / "zeros.pth"
    zeros.write_bytes(bytes(4096))  # a zero-filled file: a one-line reason, no advice either
    with pytest.raises(CheckpointError) as info:
        read_state_dict(str(zeros))
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_missing_and_garbage_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found.*official weights"):
        read_state_dict(str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(str(garbage))
    torch.save([1, 2, 3], str(tmp_path / "list.pth"))
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        read_state_dict(str(tmp_path / "list.pth"))


def test_nan_weights_are_refused(odd_faces, tmp_path, capsys) -> None:
    state = manifest_state_dict("ediffiqaT")
    state["mlp.l2.weight"][0, 0] = float("nan")
    torch.save(state, str(tmp_path / "nan.pth"))
    code, err = run_script(inference.main, "inference.py", ["--images", str(odd_faces), "--model", "ediffiqaT",
                                                            "--weights", str(tmp_path / "nan.pth"), "--output",
                                                            str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "inference.py", r"holds NaN or infinite values in 1 tensor\(s\) \(first: "
                                                 r"mlp.l2.weight\)")


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="diffiqaR, ediffiqaL, ediffiqaM, ediffiqaS, ediffiqaT"):
        build_model("ediffiqaXL")
    assert set(VARIANTS) == set(VARIANT_NAMES) | {"diffiqaR"}  # the four eDifFIQA models and DifFIQA(R)


def test_the_registry_imports_without_torch() -> None:
    """The scripts' --help and argument errors read the registry's facts; reading them imports no torch, numpy or
    model code (building a model imports what it needs)."""
    code = ("import sys, model.registry; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'numpy') or m.startswith('model.') and m != 'model.registry'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_kind_builds_a_model() -> None:
    from model.build import WRAPPERS
    from model.registry import KINDS

    assert set(WRAPPERS) == set(KINDS)
    assert {VARIANTS[name].kind for name in VARIANTS} <= set(KINDS)


def test_a_variant_registered_in_one_place_builds_saves_loads_and_scores(tmp_path, capsys, make_faces) -> None:
    """One registry entry is all a new variant needs to be built, saved, loaded strictly and chosen on the command
    line (here an eDifFIQA head on iResNet-34, which no published variant uses)."""
    import pickle

    from helpers import run_script

    import inference
    from model.registry import Variant, register_variant, variant_names

    register_variant(Variant("ediffiqaR34", "eDifFIQA(R34)", "iresnet34", "ediffiqa", None, "./configs/none.yaml"))
    try:
        assert "ediffiqaR34" in variant_names("ediffiqa")
        torch.manual_seed(0)
        state = build_model("ediffiqaR34").state_dict()
        torch.save(state, str(tmp_path / "r34.pth"))
        model = create_model("ediffiqaR34", str(tmp_path / "r34.pth"))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        assert identify_variant(state) == "ediffiqaR34"
        make_faces(tmp_path / "faces", ["a.png"])
        code, err = run_script(inference.main, "inference.py", [
            "--images", str(tmp_path / "faces"), "--model", "ediffiqaR34", "--weights", str(tmp_path / "r34.pth"),
            "--output", str(tmp_path / "out"), "--device", "cpu", "-q"], capsys)
        assert code == 0, err
        assert len(pickle.loads((tmp_path / "out" / "quality-scores.pkl").read_bytes())) == 1
        with pytest.raises(CheckpointError, match=r"holds eDifFIQA\(R34\) \('ediffiqaR34'\), not eDifFIQA\(S\)"):
            create_model("ediffiqaS", str(tmp_path / "r34.pth"))
    finally:
        VARIANTS.pop("ediffiqaR34")
