"""Names shared by the ServerApp and the ClientApp (they never import each other).

Only Flower records cross the wire; these constants name the message types and
the record keys inside them. Message types follow Flower's
``<category>.<action>`` convention.
"""

from __future__ import annotations

# Message types
INFO = "query.info"  # branch metadata (sizes, feature count), no customer data
TRAIN = "train"  # one FedAvg round: evaluate the incoming global model, train locally
EVALUATE = "evaluate"  # evaluate the final global model (and release it when asked)

# Record keys
JOB = "job"  # ConfigRecord: {"spec": JobSpec JSON, "round": int}
WEIGHTS = "weights"  # ArrayRecord: plaintext model weights
ENCRYPTED = "encrypted"  # ConfigRecord: CKKS ciphertexts of a weighted update / sum
METRICS = "metrics"  # MetricRecord: training metrics and evaluation summaries
BRANCH = "branch"  # ConfigRecord: branch_id, status, refusal reason, ledger entries

# Branch statuses (typed replies)
STATUS_OK = "ok"
STATUS_REFUSED = "refused"
REASON_BUDGET = "budget-exhausted"
REASON_DELTA = "delta-too-large"
REASON_INVALID_DATA = "invalid-data"
REASON_ERROR = "error"
