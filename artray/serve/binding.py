"""Keep each Serve replica's own gRPC port on loopback when its Ray node is loopback-only.

Ray Serve 2.60 opens an inter-deployment gRPC server in every replica bound to ``[::]:0``
(all interfaces), whatever the node's address. Ray's token auth guards it, but on a cluster
that ``artray.runtime.init_ray`` or cluster/start-local.sh bound to 127.0.0.1 nothing should
listen beyond this machine. Every artray deployment calls :func:`pin_replica_grpc_to_node` in
its constructor, which runs before Serve opens that port: on a loopback node the bind
address becomes ``127.0.0.1:0`` (its peers dial the node address, 127.0.0.1 there); on any
other node nothing changes. If Ray's internals move, it does nothing.
"""

from __future__ import annotations

from artray.runtime import is_loopback


def pin_replica_grpc_to_node() -> None:
    """In a Serve replica on a loopback node: bind the replica's gRPC server to 127.0.0.1, not ``[::]``."""
    import ray

    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "artray_pinned", False):
        return
    host = ray.util.get_node_ip_address()
    if not is_loopback(host):
        return

    def add_port(server, address: str):
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    add_port.artray_pinned = True
    replica.add_port_to_grpc_server = add_port
