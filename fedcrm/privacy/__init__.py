"""Differential privacy of branch customers: accounting, ceilings, signed ledger, report.

Modules (imported on demand; Opacus and torch load only with the accounting):

* :mod:`~fedcrm.privacy.accounting` - :class:`Mechanism`, ``compute_epsilon``,
  ``noise_multiplier_for``, ``default_delta``, ``check_delta``;
* :mod:`~fedcrm.privacy.composition` - repeatable, fast composition with Opacus'
  accountants for ledgers (cumulative epsilon at every entry);
* :mod:`~fedcrm.privacy.signing` - branch keys: Ed25519 signing, X25519 agreement (PEM files);
* :mod:`~fedcrm.privacy.ledger` - the append-only signed ledger and the server copy;
* :mod:`~fedcrm.privacy.budget` - a branch's epsilon ceiling;
* :mod:`~fedcrm.privacy.verify` - verifying ledgers with the public keys;
* :mod:`~fedcrm.privacy.report` - the HTML compliance report (its chart is
  :mod:`fedcrm.plots.privacy`).

Nothing here knows about federation (no Flower import).
"""
