"""Branch-side data: contract, data spec, readers, validation, loading, synthetic data,
CDNOW, features."""

from fedcrm.data.cdnow import import_cdnow, load_cdnow
from fedcrm.data.dataset import CHANNELS, EVENT_TYPES, FeatureSet
from fedcrm.data.features import (
    branch_feature_sets,
    build_features,
    resolve_cutoff,
    stratified_split,
)
from fedcrm.data.loader import CRMData, load_crm
from fedcrm.data.source import BranchSource, branch_source
from fedcrm.data.spec import DataSpec, load_spec
from fedcrm.data.synthetic import (
    TRUE_SIGNAL,
    generate,
    write_synthetic,
    write_synthetic_branch,
)
from fedcrm.data.validate import inspect_dir, validate_dir

__all__ = [
    "CHANNELS",
    "EVENT_TYPES",
    "TRUE_SIGNAL",
    "BranchSource",
    "CRMData",
    "DataSpec",
    "FeatureSet",
    "branch_feature_sets",
    "branch_source",
    "build_features",
    "generate",
    "import_cdnow",
    "inspect_dir",
    "load_cdnow",
    "load_crm",
    "load_spec",
    "resolve_cutoff",
    "stratified_split",
    "validate_dir",
    "write_synthetic",
    "write_synthetic_branch",
]
