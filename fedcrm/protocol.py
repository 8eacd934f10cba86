"""Names shared by the ServerApp and the ClientApp (they never import each other).

Only Flower records cross the wire; these constants name the message types and
the record keys inside them. Message types follow Flower's
``<category>.<action>`` convention.
"""

from __future__ import annotations

# Message types
INFO = "query.info"  # branch metadata (sizes, feature count), no customer data
# Deployment only (federation.keep_warm_s): keeps a SuperNode from its 3 s idle sleep
# between exchanges; the branch reads nothing and answers with an empty reply at the
# deadline the server sets (server/exchange.py, client/standby.py).
STANDBY = "query.standby"
TRAIN = "train"  # one FedAvg round: evaluate the incoming global model, train locally
EVALUATE = "evaluate"  # evaluate the final global model (and release it when asked)

# Encrypted jobs (privacy=he|dp_he): the key ceremony and the secure-aggregation steps
# (fedcrm.client.secure_agg, fedcrm.server.secure_agg).
HE_KEYS = "query.he_keys"  # roster, holder -> key held; holder: parameters + sealed secrets
HE_ACCEPT = "query.he_accept"  # the holder's sealed secret -> the key now held
SECAGG_ENDORSE = "train.secagg_endorse"  # (live, dropped) claim of a step -> signed endorsement
SECAGG_REVEAL = "train.secagg_reveal"  # reveal request of a step -> shares (+ next advertisement)

# Record keys
JOB = "job"  # ConfigRecord: {"spec": JobSpec JSON, "round": int}
SECAGG = "secagg"  # ConfigRecord: roster, step, advertisements, claims, shares (bytes values)
WEIGHTS = "weights"  # ArrayRecord: plaintext model weights
ENCRYPTED = "encrypted"  # ConfigRecord: BFV ciphertexts of a masked upload / of a step's sum
METRICS = "metrics"  # MetricRecord: training metrics and evaluation summaries
BRANCH = "branch"  # ConfigRecord: branch_id, status, refusal reason, ledger entries

# Branch statuses (typed replies)
STATUS_OK = "ok"
STATUS_REFUSED = "refused"
REASON_BUDGET = "budget-exhausted"
REASON_DELTA = "delta-too-large"
# A branch with an epsilon ceiling takes part only in jobs with differential privacy.
REASON_DP_REQUIRED = "dp-required"
REASON_INVALID_DATA = "invalid-data"
REASON_ERROR = "error"
# The branch answered this step before with other content: it never releases twice.
REASON_RELEASE_CHANGED = "release-changed"
# The step is not in the job's plan (round > rounds, level >= max_depth, more trees
# than n_estimators), or the plan changed within a run.
REASON_OUTSIDE_PLAN = "outside-plan"
# The branch's ledger is shorter than (or diverges from) its anchor or the server's copy.
REASON_LEDGER_BEHIND = "ledger-behind-anchor"
# A step already released whose kept reply is gone: refused, never recomputed.
REASON_RELEASE_LOST = "release-lost"
# Under DP the task's cutoff must be a date fixed before looking at the data.
REASON_CUTOFF = "cutoff-not-fixed"
# Reasons that retire a branch from training for the rest of a run.
RETIRING_REASONS = (
    REASON_BUDGET,
    REASON_DELTA,
    REASON_DP_REQUIRED,
    REASON_LEDGER_BEHIND,
    REASON_CUTOFF,
    REASON_OUTSIDE_PLAN,
)

# Federated trees (model=gbdt). One ``train.gbdt_*`` exchange per protocol step;
# every message carries the model so far, so a branch holds no state between them.
GBDT_RANGES = "train.gbdt_ranges"  # -> per-feature min/max (public bounds under DP)
GBDT_BINS = "train.gbdt_bins"  # agreed ranges -> fine histogram of the branch's values
GBDT_LEVEL = "train.gbdt_level"  # exact: previous aggregate -> splits + next level's histograms
GBDT_BATCH = "train.gbdt_batch"  # batched: previous aggregate -> leaf sums of the next batch
GBDT_EVALUATE = "evaluate.gbdt"  # last aggregate -> final trees + score summary
GBDT_MODEL = "gbdt_model"  # ArrayRecord: lo/hi, edges, trees.<field>, partial.<field>, sizes
GBDT_STEP = "gbdt_step"  # ConfigRecord: what the branch released (stage, tree, level, batch, shape)
RELEASE = "release"  # ArrayRecord "values": a branch's plaintext (noisy) histogram / leaf sums
AGGREGATE = "aggregate"  # ArrayRecord "values": plaintext sum over branches of the last release
REASON_DISAGREE = "splits-disagree"
