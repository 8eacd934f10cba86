"""Real deployment: provisioning, branch keys and their admission, preflight checks.

``fedcrm federation init`` lays out a federation directory (CA, server
certificate, the kit for branches: :mod:`fedcrm.deploy.provision`,
:mod:`fedcrm.deploy.tls`); ``fedcrm node init`` makes a branch's keys on its
own machine and the request carrying their public halves
(:mod:`fedcrm.deploy.branch_dir`, :mod:`fedcrm.deploy.request`); ``fedcrm
server register`` records them in the admitted list
(:mod:`fedcrm.deploy.admission`) and on the SuperLink
(:mod:`fedcrm.deploy.superlink`); ``fedcrm server start`` and ``fedcrm node
start`` check certificates, keys, data and node config before they hand over
to ``flower-superlink`` / ``flower-supernode`` (:mod:`fedcrm.deploy.preflight`).
"""
