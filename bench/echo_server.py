"""The anchor for request throughput: a trivial gRPC server that answers every unary call with
its request bytes, built the same way as ours (thread pool, one port), nothing else."""
from __future__ import annotations

import concurrent.futures
import sys

import grpc


def main() -> None:
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
