"""Histogram gradient-boosted trees for the logistic loss, scikit-learn style.

:class:`HistGBDT` trains centrally with the same pure functions the federated
tree protocol calls (:mod:`fedcrm.models.gbdt_hist`, :mod:`fedcrm.models.gbdt_tree`);
:meth:`HistGBDT.from_trees` assembles a model a federated run has grown, and
:meth:`HistGBDT.export_xgboost_json` writes it in XGBoost's JSON model format.

Example
-------
>>> model = HistGBDT(n_estimators=50, max_depth=4).fit(X, y)  # doctest: +SKIP
>>> model.predict_proba(X_test)[:, 1]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedcrm.config import GBDTModelConfig
from fedcrm.models.gbdt_bins import (
    apply_bins,
    bin_edges_from_fine_histograms,
    compute_bin_edges,
    feature_ranges,
    fine_histogram,
    n_bins_of,
)
from fedcrm.models.gbdt_hist import (
    Split,
    best_splits,
    check_histogram,
    leaf_weight,
    node_histograms,
)
from fedcrm.models.gbdt_tree import (
    Tree,
    grow_tree,
    local_histograms,
    logistic_grad_hess,
    split_nodes,
)

ImportanceKind = Literal["weight", "gain", "total_gain", "cover", "total_cover"]
_PARAMS = (
    "n_estimators",
    "max_depth",
    "learning_rate",
    "reg_lambda",
    "gamma",
    "min_child_weight",
    "max_bin",
    "base_score",
)


def base_margin(base_score: float) -> float:
    """The log-odds XGBoost starts every row from (``base_score`` is a probability)."""
    if not 0.0 < base_score < 1.0:
        raise ValueError("base_score must be a probability strictly between 0 and 1")
    return float(np.log(base_score / (1.0 - base_score)))


class HistGBDT:
    """Histogram GBDT for binary classification (XGBoost's ``binary:logistic``).

    Parameters
    ----------
    n_estimators
        Number of boosting rounds (trees).
    max_depth
        Maximum depth of a tree.
    learning_rate
        Shrinkage of every leaf value (XGBoost's ``eta``).
    reg_lambda
        L2 regularisation of leaf weights.
    gamma
        Minimum loss change to split (XGBoost's convention, no ½ factor). Splits
        below it are not made (XGBoost instead prunes them afterwards, which
        keeps a weak split whose children gain more).
    min_child_weight
        Minimum hessian sum of a child.
    max_bin
        Maximum number of value bins per feature; missing values get one more.
    base_score
        Initial probability of every row.

    Attributes
    ----------
    trees_ : list of Tree
    bin_edges_ : list of ndarray of float32
        Bin edges per feature; thresholds are taken from them.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when feature names were given (or ``X`` was a DataFrame).
    classes_ : ndarray, ``[0, 1]``
    """

    def __init__(
        self,
        n_estimators: int = 50,
        max_depth: int = 4,
        learning_rate: float = 0.3,
        reg_lambda: float = 1.0,
        gamma: float = 0.0,
        min_child_weight: float = 1.0,
        max_bin: int = 32,
        base_score: float = 0.5,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.reg_lambda = reg_lambda
        self.gamma = gamma
        self.min_child_weight = min_child_weight
        self.max_bin = max_bin
        self.base_score = base_score

    # ------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: GBDTModelConfig, *, base_score: float = 0.5) -> HistGBDT:
        """An unfitted model with the hyper-parameters of ``config``."""
        return cls(
            n_estimators=config.n_estimators,
            max_depth=config.max_depth,
            learning_rate=config.learning_rate,
            reg_lambda=config.reg_lambda,
            gamma=config.gamma,
            min_child_weight=config.min_child_weight,
            max_bin=config.max_bin,
            base_score=base_score,
        )

    @classmethod
    def from_trees(
        cls,
        trees: Sequence[Tree],
        bin_edges: Sequence[np.ndarray],
        base_score: float = 0.5,
        params: Mapping[str, Any] | None = None,
        *,
        feature_names: Sequence[str] | None = None,
    ) -> HistGBDT:
        """A fitted model from trees grown elsewhere (e.g. by a federated run)."""
        model = cls(**{**dict(params or {}), "base_score": base_score})
        model._set_fitted(list(trees), bin_edges, feature_names)
        return model

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters by name (scikit-learn's protocol)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params: Any) -> HistGBDT:
        """Set hyper-parameters by name (scikit-learn's protocol)."""
        for name, value in params.items():
            if name not in _PARAMS:
                raise ValueError(f"unknown parameter {name!r}; valid: {', '.join(_PARAMS)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"HistGBDT({args})"

    # ---------------------------------------------------------------- training
    def fit(
        self,
        X: Any,
        y: Any,
        *,
        feature_names: Sequence[str] | None = None,
        bin_edges: Sequence[np.ndarray] | None = None,
    ) -> HistGBDT:
        """Grow ``n_estimators`` trees on ``(X, y)``.

        Parameters
        ----------
        X : array-like, shape (n, n_features)
            NaN marks a missing value. Column names of a DataFrame become
            ``feature_names_in_``.
        y : array-like of {0, 1}, shape (n,)
        feature_names
            Names of the columns of ``X``.
        bin_edges
            Use these edges (e.g. from federated fine histograms) instead of
            the quantiles of ``X``.
        """
        if feature_names is None and hasattr(X, "columns"):
            feature_names = [str(c) for c in X.columns]
        X = np.asarray(X, dtype=np.float32)
        labels = _check_labels(y, X.shape[0])
        edges = (
            compute_bin_edges(X, max_bin=self.max_bin)
            if bin_edges is None
            else [np.asarray(e, np.float32) for e in bin_edges]
        )
        binned = apply_bins(X, edges)
        n_bins = n_bins_of(edges)
        margin = np.full(X.shape[0], base_margin(self.base_score))
        trees = []
        for _ in range(self.n_estimators):
            grad, hess = logistic_grad_hess(margin, labels)
            tree = grow_tree(
                local_histograms(binned, grad, hess, n_bins=n_bins),
                edges=edges,
                max_depth=self.max_depth,
                reg_lambda=self.reg_lambda,
                gamma=self.gamma,
                min_child_weight=self.min_child_weight,
                learning_rate=self.learning_rate,
            )
            margin += tree.value[tree.apply_binned(binned, missing_bin=n_bins)]
            trees.append(tree)
        self._set_fitted(trees, edges, feature_names)
        return self

    def _set_fitted(
        self,
        trees: list[Tree],
        edges: Sequence[np.ndarray],
        feature_names: Sequence[str] | None,
    ) -> None:
        self.trees_ = trees
        self.bin_edges_ = [np.asarray(e, np.float32) for e in edges]
        self.n_features_in_ = len(self.bin_edges_)
        self.classes_ = np.array([0, 1])
        if feature_names is not None:
            if len(feature_names) != self.n_features_in_:
                raise ValueError(
                    f"{len(feature_names)} feature names for {self.n_features_in_} features"
                )
            self.feature_names_in_ = np.asarray(feature_names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    # -------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "trees_"):
            raise ValueError("this HistGBDT is not fitted yet; call fit() or from_trees() first")

    def predict_margin(self, X: Any) -> np.ndarray:
        """Log-odds of class 1 for every row."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n, {self.n_features_in_})")
        margin = np.full(X.shape[0], base_margin(self.base_score))
        for tree in self.trees_:
            margin += tree.predict_margin(X)
        return margin

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of class 0 and class 1, shape (n, 2)."""
        p = 1.0 / (1.0 + np.exp(-np.clip(self.predict_margin(X), -500.0, 500.0)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (probability of class 1 at least 0.5)."""
        return (self.predict_margin(X) >= 0.0).astype(np.int64)

    # ------------------------------------------------------------- importances
    @property
    def feature_importances_(self) -> np.ndarray:
        """Total gain of every feature's splits, normalised to sum to 1."""
        total = self._importance("total_gain")
        s = total.sum()
        return total / s if s > 0 else total

    def feature_importance(self, kind: ImportanceKind = "total_gain") -> dict[str, float]:
        """Importance of every feature that is split on, by name (XGBoost's ``get_score``).

        Parameters
        ----------
        kind
            ``weight`` (number of splits), ``gain`` / ``cover`` (mean loss change
            / hessian sum per split), ``total_gain`` / ``total_cover`` (sums).
            Names are ``feature_names_in_`` or ``f0, f1, ...``.
        """
        values = self._importance(kind)
        used = self._importance("weight") > 0
        names = (
            [str(n) for n in self.feature_names_in_]
            if hasattr(self, "feature_names_in_")
            else [f"f{i}" for i in range(self.n_features_in_)]
        )
        return {names[i]: float(values[i]) for i in np.flatnonzero(used)}

    def _importance(self, kind: str) -> np.ndarray:
        self._check_fitted()
        count = np.zeros(self.n_features_in_)
        gain = np.zeros(self.n_features_in_)
        cover = np.zeros(self.n_features_in_)
        for tree in self.trees_:
            split = ~tree.is_leaf
            np.add.at(count, tree.feature[split], 1.0)
            np.add.at(gain, tree.feature[split], tree.gain[split])
            np.add.at(cover, tree.feature[split], tree.cover[split])
        with np.errstate(divide="ignore", invalid="ignore"):
            table = {
                "weight": count,
                "total_gain": gain,
                "total_cover": cover,
                "gain": np.where(count > 0, gain / count, 0.0),
                "cover": np.where(count > 0, cover / count, 0.0),
            }
        if kind not in table:
            raise ValueError(f"unknown importance kind {kind!r}; valid: {', '.join(table)}")
        return table[kind]

    # ------------------------------------------------------------------ export
    def export_xgboost_json(self, path: str | Path) -> Path:
        """Write the model in XGBoost's JSON format; see :func:`export_xgboost_json`."""
        from fedcrm.models.gbdt_export import export_xgboost_json

        return export_xgboost_json(self, path)


def _check_labels(y: Any, n: int) -> np.ndarray:
    labels = np.asarray(y, dtype=np.float64).ravel()
    if labels.shape[0] != n:
        raise ValueError(f"X has {n} rows but y has {labels.shape[0]}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("y must hold binary labels 0 and 1")
    return labels


__all__ = [
    "HistGBDT",
    "Split",
    "Tree",
    "apply_bins",
    "base_margin",
    "best_splits",
    "bin_edges_from_fine_histograms",
    "check_histogram",
    "compute_bin_edges",
    "feature_ranges",
    "fine_histogram",
    "grow_tree",
    "leaf_weight",
    "local_histograms",
    "logistic_grad_hess",
    "n_bins_of",
    "node_histograms",
    "split_nodes",
]
