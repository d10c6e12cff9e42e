"""A Python gRPC client of Coffer, as an operator would write one.

Generates stubs from proto/ into a temporary directory, loads them beside the
standard googleapis-common-protos package (which owns google/rpc/*.proto), sends
an invalid CreateBucket and decodes the google.rpc.BadRequest detail of the
answer. Prints the violated field paths, one per line.

Fails if proto/ carries its own copy of a google/rpc file (it would shadow the
standard one). Usage: bad_request_client.py PROTO_DIR HOST:PORT TOKEN
"""
import os
import sys
import tempfile

import importlib

import grpc
from grpc_tools import protoc


def generate_stubs(proto_dir, out_dir):
    protos = sorted(
        os.path.relpath(os.path.join(root, name), proto_dir)
        for root, _, names in os.walk(proto_dir)
        for name in names
        if name.endswith(".proto")
    )
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
         f"--grpc_python_out={out_dir}", *protos]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")


def main():
    proto_dir, address, token = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(proto_dir, out_dir)
        # The generated code goes first, as in a project that vendors it; the
        # google.rpc messages must still be googleapis-common-protos' own.
        sys.path.insert(0, out_dir)
        error_details = importlib.import_module("google.rpc.error_details_pb2")
        status_pb2 = importlib.import_module("google.rpc.status_pb2")
        if error_details.__file__.startswith(out_dir):
            sys.exit("proto/ shadows google/rpc/error_details.proto with its own copy")
        from coffer.v1 import buckets_pb2, buckets_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            client = buckets_pb2_grpc.BucketServiceStub(channel)
            try:
                client.CreateBucket(
                    buckets_pb2.CreateBucketRequest(bucket=buckets_pb2.Bucket(name="")),
                    metadata=[("authorization", f"Bearer {token}")],
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    sys.exit(f"expected INVALID_ARGUMENT, got {error.code()}")
                trailers = dict(error.trailing_metadata() or ())
                status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
                for detail in status.details:
                    bad = error_details.BadRequest()
                    if detail.Unpack(bad):
                        for violation in bad.field_violations:
                            print(violation.field)
                return
            sys.exit("an empty bucket was accepted")


if __name__ == "__main__":
    main()
