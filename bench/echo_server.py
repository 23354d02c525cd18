"""The anchor for request throughput: a trivial gRPC server that answers every unary call with
its request bytes, built the same way as ours (thread pool, one port), nothing else. Given
the CA certificate, a certificate and its key (paths), it serves mutual TLS as ours does by
default; given nothing, plain text."""
from __future__ import annotations

import concurrent.futures
import pathlib
import sys

import grpc


def main() -> None:
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    if len(sys.argv) > 1:
        from vws.common import tls
        identity = tls.Identity(*(pathlib.Path(p).read_bytes() for p in sys.argv[1:4]))
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(identity, identity.ca_pem))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
