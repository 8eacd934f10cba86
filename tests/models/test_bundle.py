"""Model bundles: self-contained, signed, hashed, size-limited; refused when anything is off."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcrm.errors import BundleError
from fedcrm.models import bundle as bundle_mod
from fedcrm.models.attribution import lstm_margins, tree_margins
from fedcrm.models.bundle import load_bundle, write_bundle
from fedcrm.models.bundle_codec import decode_lstm
from fedcrm.models.bundle_find import default_key_files, find_bundle, load_trusted_keys
from fedcrm.models.bundle_writers import write_branch_bundle, write_server_bundle
from fedcrm.privacy.signing import generate_signing_key, load_private_key, load_public_key, sign

KINDS = ("lstm", "gbdt")


def _logits(bundle, fs) -> np.ndarray:  # type: ignore[no-untyped-def]
    if bundle.kind == "gbdt":
        return tree_margins(bundle.model, fs.tabular)
    return lstm_margins(bundle.model, fs)[0]


def _server_bundle(world, kind: str, run: Path) -> Path:  # type: ignore[no-untyped-def]
    model, cfg = world.model(kind)
    path, _ = write_server_bundle(
        run, model=model, model_config=cfg, task=world.task, run_id="r1", key_dir=run / "keys"
    )
    return path


def _keys(path: Path) -> list:
    return load_trusted_keys(default_key_files(path), strict=False)


@pytest.mark.parametrize("kind", KINDS)
def test_a_loaded_bundle_predicts_what_the_trained_model_predicted(
    scoring_world, tmp_path: Path, kind: str
) -> None:
    path = _server_bundle(scoring_world, kind, tmp_path / "run")
    bundle = load_bundle(path, trusted_keys=_keys(path))

    got = _logits(bundle, scoring_world.train)
    want = scoring_world.logits(kind)
    np.testing.assert_allclose(np.clip(got, -12, 12), want, atol=1e-5)
    assert bundle.kind == kind
    assert bundle.model_config == scoring_world.model(kind)[1]
    assert bundle.task == scoring_world.task
    assert bundle.feature_names == scoring_world.train.tabular_names
    assert bundle.manifest["origin"] == "server"
    assert (tmp_path / "run" / "keys" / "release.pub").exists()


def test_tree_scores_equal_xgboost_on_the_exported_json(scoring_world, tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    path = _server_bundle(scoring_world, "gbdt", tmp_path / "run")
    bundle = load_bundle(path, trusted_keys=_keys(path))
    exported = scoring_world.gbdt.export_xgboost_json(tmp_path / "model.xgb.json")
    booster = xgb.Booster(model_file=str(exported))
    X = scoring_world.train.tabular

    ours = tree_margins(bundle.model, X)
    theirs = booster.predict(
        xgb.DMatrix(X, feature_names=booster.feature_names), output_margin=True
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    np.testing.assert_allclose(ours, scoring_world.gbdt.predict_margin(X), atol=1e-5)


def test_the_bundle_loads_alone_in_a_fresh_process(scoring_world, tmp_path: Path) -> None:
    """Copied away from the run (no training data, no run files), in a new interpreter."""
    alone = tmp_path / "alone"
    alone.mkdir()
    expected = {}
    for kind in KINDS:
        path = _server_bundle(scoring_world, kind, tmp_path / kind)
        shutil.copytree(path, alone / kind)
        shutil.copy(tmp_path / kind / "keys" / "release.pub", alone / f"{kind}.pub")
        expected[kind] = _logits(load_bundle(path, trusted_keys=_keys(path)), scoring_world.train)
    rows = scoring_world.train.subset(np.arange(50))
    rows.save(str(alone / "features.npz"))
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from fedcrm.data.dataset import FeatureSet\n"
        "from fedcrm.models.attribution import lstm_margins, tree_margins\n"
        "from fedcrm.models.bundle import load_bundle\n"
        "from fedcrm.privacy.signing import load_public_key\n"
        "d = Path(sys.argv[1]); fs = FeatureSet.load(str(d / 'features.npz')); out = {}\n"
        "for kind in ('lstm', 'gbdt'):\n"
        "    b = load_bundle(d / kind, trusted_keys=[load_public_key(d / f'{kind}.pub')])\n"
        "    trees = kind == 'gbdt'\n"
        "    z = tree_margins(b.model, fs.tabular) if trees else lstm_margins(b.model, fs)[0]\n"
        "    out[kind] = z.tolist()\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(alone)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=True,
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in KINDS:
        np.testing.assert_allclose(got[kind], expected[kind][:50], atol=1e-9)


def _tamper_manifest(path: Path, rehash: bool) -> None:
    manifest = (path / "manifest.json").read_bytes().replace(b'"run_id": "r1"', b'"run_id": "r2"')
    (path / "manifest.json").write_bytes(manifest)
    if rehash:  # someone who also recomputes the content hash
        import hashlib

        sig = json.loads((path / "signature.json").read_text())
        sig["content_hash"] = hashlib.sha256(manifest).hexdigest()
        (path / "signature.json").write_text(json.dumps(sig))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: _tamper_manifest(p, rehash=False), "changed after signing"),
        (lambda p: _tamper_manifest(p, rehash=True), "does not verify against the trusted"),
        (
            lambda p: (p / "model.xgb.json").write_bytes(
                (p / "model.xgb.json").read_bytes().replace(b'"num_trees"', b'"num_trees" ')
            ),
            "does not match its hash",
        ),
        (lambda p: (p / "model.xgb.json").unlink(), "has no model file"),
        (lambda p: (p / "signature.json").write_text("{not json"), "signature is not JSON"),
    ],
    ids=["manifest", "manifest-rehashed", "model-file", "model-missing", "signature"],
)
def test_a_tampered_bundle_is_refused(scoring_world, tmp_path: Path, tamper, message: str) -> None:
    path = _server_bundle(scoring_world, "gbdt", tmp_path / "run")
    tamper(path)
    with pytest.raises(BundleError, match=message):
        load_bundle(path, trusted_keys=_keys(path))


def test_a_bundle_signed_by_another_key_is_refused(scoring_world, tmp_path: Path) -> None:
    path = _server_bundle(scoring_world, "lstm", tmp_path / "run")
    other_priv, other_pub = generate_signing_key(tmp_path / "other", "mallory")
    manifest = (path / "manifest.json").read_bytes()
    sig = json.loads((path / "signature.json").read_text())
    sig["signature"] = sign(load_private_key(other_priv), manifest)
    (path / "signature.json").write_text(json.dumps(sig))

    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(path, trusted_keys=_keys(path))
    # ... and a bundle is only as trusted as the keys given: mallory's key verifies it.
    assert load_bundle(path, trusted_keys=[load_public_key(other_pub)]).kind == "lstm"
    with pytest.raises(BundleError, match="no trusted public key"):
        load_bundle(path, trusted_keys=[])


def test_an_oversize_file_is_refused_before_it_is_read(
    scoring_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _server_bundle(scoring_world, "lstm", tmp_path / "run")
    size = (path / "weights.npz").stat().st_size
    monkeypatch.setattr(bundle_mod, "MAX_MODEL_BYTES", size - 1)
    with pytest.raises(BundleError, match="larger than"):
        load_bundle(path, trusted_keys=_keys(path))
    monkeypatch.setattr(bundle_mod, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(BundleError, match=r"manifest\.json is larger than 100 bytes"):
        load_bundle(path, trusted_keys=_keys(path))


def _npz_of_headers(shapes: dict[str, tuple[int, ...]], objects: tuple[str, ...] = ()) -> bytes:
    """An archive of array headers without data (what a crafted file may announce)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, shape in shapes.items():
            with zf.open(f"{name}.npy", "w") as fh:
                descr = "|O" if name in objects else "<f4"
                header = {"descr": descr, "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(fh, header)
    return buf.getvalue()


def test_crafted_weights_are_refused_from_their_headers_without_allocating(scoring_world) -> None:
    from fedcrm.models.bundle_codec import _lstm_names_shapes

    cfg, n_tab = scoring_world.lstm_cfg, scoring_world.train.tabular.shape[1]
    shapes = _lstm_names_shapes(cfg, n_tab)
    # Every name right, one header announcing 4 TB of floats: refused, never allocated.
    huge = {**shapes, "lstm.weight_hh_l0": (10**12,)}
    with pytest.raises(BundleError, match=r"lstm.weight_hh_l0 is float32\[1000000000000\]"):
        decode_lstm(_npz_of_headers(huge), cfg, n_tab)
    with pytest.raises(BundleError, match="does not hold the configured LSTM"):
        decode_lstm(_npz_of_headers({"x": (3,)}), cfg, n_tab)
    # Object arrays (pickles) never load.
    with pytest.raises(BundleError, match=r"head\.0\.bias is object"):
        decode_lstm(_npz_of_headers(shapes, objects=("head.0.bias",)), cfg, n_tab)
    with pytest.raises(BundleError, match="not a readable numpy archive"):
        decode_lstm(b"PK\x03\x04 not a zip", cfg, n_tab)


def test_a_branch_copy_keeps_its_training_distribution_and_own_key(
    scoring_world, tmp_path: Path
) -> None:
    model, cfg = scoring_world.model("gbdt")
    fs = scoring_world.train
    models = tmp_path / "branch" / "models"
    args = dict(model=model, model_config=cfg, task=scoring_world.task, branch_id="b1")
    first = write_branch_bundle(
        models, run_id="r1", train=fs.subset(np.arange(300)), test=fs, **args
    )
    second = write_branch_bundle(models, run_id="r2", train=fs, **args)

    keys = _keys(first)
    assert [p.name for p in default_key_files(first)] == ["b1.pub"]  # created on first use
    a, b = load_bundle(first, trusted_keys=keys), load_bundle(second, trusted_keys=keys)
    assert a.key_id == b.key_id
    assert a.manifest["origin"] == "branch" and a.manifest["branch_id"] == "b1"
    assert a.drift_reference is not None and a.drift_reference.customers == 300
    assert a.calibration is not None and a.calibration.method == "platt"
    assert b.calibration is None  # no test customers given
    assert find_bundle(models) in (first, second)


def test_a_branch_signing_key_from_the_node_config_signs_its_copy(
    scoring_world, tmp_path: Path
) -> None:
    priv, pub = generate_signing_key(tmp_path / "signing", "b1")
    path = write_branch_bundle(
        tmp_path / "models", model=scoring_world.lstm_weights, model_config=scoring_world.lstm_cfg,
        task=scoring_world.task, run_id="r1", branch_id="b1", train=scoring_world.train,
        signing_key=priv,
    )  # fmt: skip
    assert not (tmp_path / "models" / "keys").exists()
    assert load_bundle(path, trusted_keys=[load_public_key(pub)]).kind == "lstm"


def test_weights_that_do_not_fit_the_configuration_are_not_written(
    scoring_world, tmp_path: Path
) -> None:
    priv, _ = generate_signing_key(tmp_path, "release")
    with pytest.raises(BundleError, match="tabular features"):
        write_bundle(
            tmp_path / "b", model=scoring_world.lstm_weights, model_config=scoring_world.lstm_cfg,
            task=scoring_world.task, feature_names=["a", "b"], signing_key=load_private_key(priv),
            origin="server", run_id="r1",
        )  # fmt: skip


def test_find_bundle_says_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="run directory"):
        find_bundle(tmp_path)
