"""Declared attributes: a household panel's categorical columns reach both models' inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcrm.cli import main
from fedcrm.data.features import build_features
from fedcrm.data.loader import load_crm
from fedcrm.data.spec import load_spec
from fedcrm.data.synthetic import write_synthetic
from fedcrm.data.validate import inspect_dir
from fedcrm.errors import ConfigError
from fedcrm.models.gbdt import HistGBDT

AGE = ["18-24", "25-34", "35-49", "50-64", "65+"]
INCOME = ["<15K", "15-34K", "35-49K", "50-74K", "75K+"]
MARITAL = ["married", "single", "widowed"]
SPEC = """
attributes:
  age_band: {kind: categorical, categories: ["18-24", "25-34", "35-49", "50-64", "65+"]}
  income: {kind: categorical, categories: ["<15K", "15-34K", "35-49K", "50-74K", "75K+"]}
  marital_status: {kind: categorical, categories: [married, single, widowed]}
  household_size: numeric
"""


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A household-panel-like export: one branch, attributes as a panel tool writes them."""
    root = tmp_path_factory.mktemp("panel")
    write_synthetic(root, branches=1, customers=400, seed=4)
    customers = pd.read_csv(root / "customers.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(0)
    n = len(customers)
    customers["age_band"] = rng.choice(AGE, n)
    customers["income"] = rng.choice(INCOME, n)
    customers["marital_status"] = rng.choice([*MARITAL, "Divorced"], n)  # one value undeclared
    customers["household_size"] = rng.integers(1, 6, n).astype(str)
    customers.to_csv(root / "customers.csv", index=False)
    (root / "data_spec.yaml").write_text(SPEC)
    return root


def test_categoricals_are_one_hot_with_an_other_column(panel: Path) -> None:
    data = load_crm(panel)
    fs = build_features(data, cutoff=None, horizon_days=90, max_events=20)
    names = fs.tabular_names
    assert [n for n in names if n.startswith("age_band=")] == [
        *(f"age_band={a}" for a in AGE),
        "age_band=other",
    ]
    # XGBoost refuses `<` in feature names
    assert next(n for n in names if n.startswith("income=")) == "income=lt15K"
    assert "attr_household_size" in names and "marital_status=other" in names
    tab = pd.DataFrame(fs.tabular, columns=names)
    declared = [n for n in names if "=" in n and not n.endswith("=other")]
    assert (tab[declared].std() > 0).all()  # no constant column: the model sees the values
    # each customer has exactly one category per attribute; "Divorced" counts as other
    assert (tab[[f"age_band={a}" for a in AGE]].sum(axis=1) == 1).all()
    assert (tab[[n for n in names if n.startswith("income=")]].sum(axis=1) == 1).all()
    divorced = data.customers.set_index("customer_id").loc[fs.customer_ids, "marital_status"]
    other = tab["marital_status=other"].to_numpy() == 1
    assert np.array_equal(other, (divorced == "Divorced").to_numpy())
    assert tab["attr_household_size"].nunique() == 5


def test_a_vocabulary_can_be_passed_in(panel: Path) -> None:
    data = load_crm(panel)
    agreed = {"marital_status": ["married", "single", "widowed", "divorced"]}
    fs = build_features(data, cutoff=None, horizon_days=90, max_events=5, vocabularies=agreed)
    tab = pd.DataFrame(fs.tabular, columns=fs.tabular_names)
    assert tab["marital_status=divorced"].sum() > 0
    assert tab["marital_status=other"].sum() == 0
    with pytest.raises(ConfigError, match="does not declare"):
        build_features(data, cutoff=None, horizon_days=90, max_events=5, vocabularies={"x": []})


def test_validation_reads_the_spec_beside_the_export(
    panel: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    capsys.readouterr()
    assert main(["data", "validate", str(panel)]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: customers.csv: marital_status: value outside the declared categories in "
    ) in err
    assert "Divorced" not in err
    # Without the spec every attribute column is undeclared.
    spec = tmp_path / "elsewhere.yaml"
    spec.write_text("attributes: {household_size: numeric}\n")
    assert main(["data", "validate", str(panel), "--spec", str(spec)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in out] == ["age_band", "income", "marital_status"]
    assert all("undeclared column (line 1): declare it in the data spec" in line for line in out)


def test_a_numeric_attribute_with_bands_suggests_declaring_it_categorical(
    panel: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        SPEC.replace("age_band: {kind: categorical, categories:", "age_band: numeric #")
    )
    found = inspect_dir(panel, spec=load_spec(spec))
    n = len(pd.read_csv(panel / "customers.csv"))
    assert [str(s) for s in found.summaries] == [
        f"customers.csv: age_band: not a number in {n} rows (lines 2, 3, 4, ...): write plain "
        "numbers, or declare `age_band` categorical with its categories in the data spec"
    ]


def test_personal_data_cannot_be_declared(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("attributes: {date_of_birth: numeric}\n")
    with pytest.raises(ConfigError, match="looks like personal data \\(date of birth\\)"):
        load_spec(spec)


def test_xgboost_scores_the_exported_trees_identically(panel: Path, tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    fs = build_features(load_crm(panel), cutoff=None, horizon_days=90, max_events=5)
    model = HistGBDT(n_estimators=15, max_depth=3).fit(
        fs.tabular, fs.labels, feature_names=fs.tabular_names
    )
    path = model.export_xgboost_json(tmp_path / "model.json")
    booster = xgb.Booster(model_file=str(path))
    assert booster.feature_names == fs.tabular_names
    got = booster.predict(xgb.DMatrix(fs.tabular, feature_names=fs.tabular_names))
    assert np.abs(got - model.predict_proba(fs.tabular)[:, 1]).max() <= 1e-6
