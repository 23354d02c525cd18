"""Manager-to-manager file transfer (the ground migration stands on): verified per chunk,
resumable, sending only what the receiver lacks.

    wire.py      what both ends agree on: chunk sources, limits, channel options, the chunk codec
    io.py        file I/O: a file's chunks, reads and writes at an offset, holes
    receiver.py  TransferStore: verifies, writes and journals chunks, completes transfers
    sender.py    send_file: reads the file once, sends what the receiver lacks, resumes
    servicer.py  TransferService over gRPC, in front of a TransferStore
"""
from .io import keep_chunk_buffers
from .receiver import MIN_BLOCK, Received, TransferStore
from .sender import Progress, SendOptions, TransferFailed, TransferResult, send_file
from .servicer import TransferServicer, add_to_server
from .wire import BASE, BULK_OPTIONS, CHUNK, DATA, LOCAL, ZERO, Chunk, channel_options, decode_chunk, encode_chunk

__all__ = ["BASE", "BULK_OPTIONS", "CHUNK", "DATA", "LOCAL", "MIN_BLOCK", "ZERO", "Chunk", "Progress", "Received",
           "SendOptions", "TransferFailed", "TransferResult", "TransferServicer", "TransferStore", "add_to_server",
           "channel_options", "decode_chunk", "encode_chunk", "keep_chunk_buffers", "send_file"]
