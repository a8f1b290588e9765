"""The accounting core: pure functions and state, no I/O.

``timeline`` (who held which GPU when), ``attribution`` (each sample's seconds, cost and
use split among the pods that held its GPU), ``engine`` (the incremental driver both
replay and the live agent feed), ``ledger`` (the minute rows), ``summary`` (totals
accumulated from finished rows) and ``classify`` (team, class and workload of a pod).
Commands, files, HTTP and schedulers live one level up in ``agent/``.
"""
