"""Real deployment: provisioning (CA, certificates, node keys) and preflight checks.

``fedcrm federation init`` lays out a federation directory
(:mod:`fedcrm.deploy.provision`); ``fedcrm server start`` and ``fedcrm node
start`` check certificates, keys, data and node config before they hand over
to ``flower-superlink`` / ``flower-supernode`` (:mod:`fedcrm.deploy.preflight`).
"""
