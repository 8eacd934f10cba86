"""Every plot fedcrm draws, one module per kind.

==================  ==========================================================
module              draws
==================  ==========================================================
``rounds``          AUC and loss of the federated model per round (per tree)
``branches``        per-branch test AUC, federated against local-only
``evaluation``      reliability, cumulative gains and lift, feature importance
``privacy``         the privacy report's cumulative-epsilon chart (inline SVG)
``privacy_utility`` AUC against epsilon over a sweep of runs
==================  ==========================================================

Inputs are metrics, evaluation releases (score groups) and ledger epsilons:
never a customer's data. Importing this package imports no plotting library;
the modules drawing PNGs import matplotlib (headless) when they are imported,
and ``privacy`` needs none, so the privacy report and the ClientApp never load
matplotlib.
"""
