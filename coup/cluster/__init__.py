"""Redis-coordinated cluster: adapter, presence, room ownership, node registry and ring.

Only used when `REDIS_URL` is set; `coup.app.CoupNode` then builds a `Cluster` and hands
its implementations to the core. Nothing in `coup.core` imports this package.
"""

from coup.cluster.node import Cluster
from coup.cluster.options import ClusterOptions

__all__ = ["Cluster", "ClusterOptions"]
