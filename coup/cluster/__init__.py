"""Redis-coordinated cluster: adapter, presence, room ownership, node registry and ring.

Only used when `REDIS_URL` is set; `coup.app.CoupNode` then builds a `Cluster` and hands
its implementations to the core. Nothing in `coup.core` imports this package.

Import the modules you need (`coup.cluster.node.Cluster`); this file imports nothing, so a
light user such as `coup.emitter` does not load the whole node.
"""
