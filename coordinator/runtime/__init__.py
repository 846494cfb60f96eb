"""The impure layer: drives the pure Raft core with real time, disk and network.

`driver.handle_ready` is shared with the deterministic simulator; the asyncio loop, the WAL
and the gRPC transport arrive with the coordinator member.
"""
