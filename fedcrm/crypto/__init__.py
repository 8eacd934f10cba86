"""Encryption for aggregation: exact secure aggregation (BFV + double masking).

No Flower imports; records are plain dicts. See :mod:`fedcrm.crypto.masking`
for the protocol:

* :mod:`~fedcrm.crypto.bfv` - branch side: secret context, encrypt, decrypt;
* :mod:`~fedcrm.crypto.bfv_wire`, :mod:`~fedcrm.crypto.bfv_aggregate` - server
  side: public parameters, the seeded format, sums, the contributor check
  (no TenSEAL import: a server process that only sums never imports it);
* :mod:`~fedcrm.crypto.limbs`, :mod:`~fedcrm.crypto.fixed_point` - reals to
  integers mod t and back;
* :mod:`~fedcrm.crypto.roster`, :mod:`~fedcrm.crypto.masking`,
  :mod:`~fedcrm.crypto.round_state`, :mod:`~fedcrm.crypto.unmasking`,
  :mod:`~fedcrm.crypto.secagg_wire` - the masking protocol;
* :mod:`~fedcrm.crypto.sealing` - a payload from one branch to another through
  the server; :mod:`~fedcrm.crypto.shamir`, :mod:`~fedcrm.crypto.primitives`.
"""
