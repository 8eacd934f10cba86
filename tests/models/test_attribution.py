"""Attributions in logit units: TreeSHAP sums to the logit, integrated gradients are complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcrm.models.attribution import (
    head_attributions,
    head_weight_importance,
    lstm_margins,
    sequence_attributions,
    tree_contributions,
    tree_margins,
)
from fedcrm.models.lstm import build_model, set_weights


@pytest.fixture(scope="module")
def lstm(scoring_world):  # type: ignore[no-untyped-def]
    model = build_model(scoring_world.lstm_cfg, scoring_world.train.tabular.shape[1])
    set_weights(model, scoring_world.lstm_weights)
    return model.eval()


@pytest.fixture(scope="module")
def booster(scoring_world):  # type: ignore[no-untyped-def]
    import json

    from fedcrm.models.bundle_codec import decode_trees, encode_trees

    raw = encode_trees(scoring_world.gbdt)
    names = scoring_world.train.tabular_names
    assert json.loads(raw)["learner"]["feature_names"] == names
    return decode_trees(raw, len(names), names)


def test_tree_contributions_sum_to_the_logit(scoring_world, booster) -> None:  # type: ignore[no-untyped-def]
    X = scoring_world.train.tabular
    contrib = tree_contributions(booster, X)
    assert contrib.shape == (X.shape[0], X.shape[1] + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), tree_margins(booster, X), atol=1e-4)
    np.testing.assert_allclose(
        tree_margins(booster, X), scoring_world.gbdt.predict_margin(X), atol=1e-5
    )
    # Features the trees never split on get nothing.
    unused = scoring_world.gbdt._importance("weight") == 0
    assert np.all(contrib[:, :-1][:, unused] == 0)


def test_lstm_margins_are_the_model_forward(scoring_world, lstm) -> None:  # type: ignore[no-untyped-def]
    from fedcrm.models.train import feature_tensors

    fs = scoring_world.train
    logits, states = lstm_margins(lstm, fs, batch_size=97)
    t = feature_tensors(fs, lstm)
    with torch.no_grad():
        want = lstm(t["seq_cat"], t["seq_num"], t["lengths"], t["tabular"]).double().numpy()
    np.testing.assert_allclose(logits, want, atol=1e-5)
    assert states.shape == (len(fs), lstm.hidden_size)


def test_tabular_integrated_gradients_are_complete(scoring_world, lstm) -> None:  # type: ignore[no-untyped-def]
    fs = scoring_world.train
    logits, states = lstm_margins(lstm, fs)
    baseline = np.median(fs.tabular, axis=0)
    attr = head_attributions(lstm, states, fs.tabular, baseline, steps=64)
    with torch.no_grad():
        base_in = torch.as_tensor(np.tile(baseline, (len(fs), 1)), dtype=torch.float32)
        at_base = lstm.head(lstm.head_input(torch.as_tensor(states), base_in)).squeeze(-1)
    gap = logits - at_base.double().numpy()
    np.testing.assert_allclose(attr.sum(axis=1), gap, atol=0.02 * np.abs(gap).max() + 1e-3)


def test_sequence_integrated_gradients_are_complete(scoring_world, lstm) -> None:  # type: ignore[no-untyped-def]
    from fedcrm.models.attribution import _sequence_baseline, _tensors

    fs = scoring_world.train.subset(np.arange(60))
    typical = 20.0
    attr = sequence_attributions(lstm, fs, typical_recency_days=typical, steps=64)
    assert attr.shape == (60, fs.seq_cat.shape[1], 6)
    padding = np.arange(fs.seq_cat.shape[1])[None, :] >= fs.lengths[:, None]
    assert np.all(attr[padding] == 0)
    logits, _ = lstm_margins(lstm, fs)
    seq_cat, seq_num, lengths, tab = _tensors(fs, slice(None))
    with torch.no_grad():
        x = lstm.embed(seq_cat, seq_num)
        x0 = _sequence_baseline(x, seq_num, lengths, lstm.embedding_dim, typical)
        out, _ = lstm.lstm(x0)
        h0 = out[torch.arange(60), lengths - 1]
        at_base = lstm.head(lstm.head_input(h0, tab)).squeeze(-1).double().numpy()
    gap = logits - at_base
    np.testing.assert_allclose(attr.sum(axis=(1, 2)), gap, atol=0.03 * np.abs(gap).max() + 1e-3)
    assert np.all(attr[..., 4] == 0)  # gaps are the customer's own in the baseline


def test_weight_importance_names_every_head_input(scoring_world, lstm) -> None:  # type: ignore[no-untyped-def]
    names = scoring_world.train.tabular_names
    importance = head_weight_importance(lstm, names)
    assert set(importance) == {"event sequence", *names}
    assert all(v >= 0 for v in importance.values())
