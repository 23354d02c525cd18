"""TransferService over gRPC: converts and calls the receiving side of transfers
(receiver.TransferStore). SendChunks' requests are decoded by wire.decode_chunk (a view of
each chunk's bytes, not copies), so the service is registered with add_to_server rather than
the generated function."""
from __future__ import annotations

import itertools
import logging

import grpc

from ...common import errors
from ...v1 import transfer_pb2, transfer_pb2_grpc
from .receiver import TransferStore
from .wire import decode_chunk

log = logging.getLogger("vws.manager.transfer")
SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name


def _same_transfer(first, rest):
    for c in itertools.chain([first], rest):
        if c.transfer_id != first.transfer_id:
            raise errors.InvalidArgument(f"one stream carries one transfer ({first.transfer_id}), not also "
                                         f"{c.transfer_id}", "transfer_id")
        yield c


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    def __init__(self, store: TransferStore):
        self.store = store

    def StartTransfer(self, request, context):
        o = self.store.start(request.transfer_id, request.size_bytes, request.chunk_size_bytes,
                             request.candidate_digests, request.candidate_transfer_ids)
        return transfer_pb2.StartTransferResponse(
            session=o.session, local_digests=o.local_digests, max_message_bytes=o.max_message_bytes,
            base_block_digests=o.base_block_digests, base_block_size=o.base_block_size,
            verified_chunks=[transfer_pb2.VerifiedChunk(index=k, digest=d) for k, d in sorted(o.verified.items())])

    def SendChunks(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None:
            return transfer_pb2.SendChunksResponse()
        try:
            r = self.store.receive(first.transfer_id, first.session, _same_transfer(first, request_iterator))
        except grpc.RpcError:  # the sender's side of the stream broke (link down, cancelled): expected
            log.info("transfer %s: the sender's stream broke; what was verified is kept", first.transfer_id)
            raise errors.Aborted(f"transfer {first.transfer_id}: the stream broke; start it again") from None
        return transfer_pb2.SendChunksResponse(chunks_verified=r.chunks_verified, bytes_received=r.bytes_received,
                                               bytes_reused=r.bytes_reused)

    def CommitTransfer(self, request, context):
        size, digest = self.store.commit(request.transfer_id, request.digest)
        return transfer_pb2.CommitTransferResponse(size_bytes=size, digest=digest)

    def AbortTransfer(self, request, context):
        self.store.discard(request.transfer_id)
        return transfer_pb2.AbortTransferResponse()


def add_to_server(servicer: TransferServicer, server: grpc.Server) -> str:
    """Registers the service (as the generated function would, but for SendChunks' decoder);
    returns its full name."""
    def unary(method, request_class, response_class):
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=request_class.FromString,
                                                   response_serializer=response_class.SerializeToString)
    pb = transfer_pb2
    handlers = {
        "StartTransfer": unary(servicer.StartTransfer, pb.StartTransferRequest, pb.StartTransferResponse),
        "SendChunks": grpc.stream_unary_rpc_method_handler(
            servicer.SendChunks, request_deserializer=decode_chunk,
            response_serializer=pb.SendChunksResponse.SerializeToString),
        "CommitTransfer": unary(servicer.CommitTransfer, pb.CommitTransferRequest, pb.CommitTransferResponse),
        "AbortTransfer": unary(servicer.AbortTransfer, pb.AbortTransferRequest, pb.AbortTransferResponse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return SERVICE
