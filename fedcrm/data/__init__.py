"""Branch-side data: contract, validation, loading, synthetic data, CDNOW, features."""

from fedcrm.data.cdnow import import_cdnow, load_cdnow
from fedcrm.data.dataset import CHANNELS, EVENT_TYPES, FeatureSet
from fedcrm.data.features import (
    branch_feature_sets,
    build_features,
    resolve_cutoff,
    stratified_split,
)
from fedcrm.data.loader import CRMData, load_crm
from fedcrm.data.synthetic import TRUE_SIGNAL, generate, write_synthetic
from fedcrm.data.validate import validate_dir

__all__ = [
    "CHANNELS",
    "EVENT_TYPES",
    "TRUE_SIGNAL",
    "CRMData",
    "FeatureSet",
    "branch_feature_sets",
    "build_features",
    "generate",
    "import_cdnow",
    "load_cdnow",
    "load_crm",
    "resolve_cutoff",
    "stratified_split",
    "validate_dir",
    "write_synthetic",
]
