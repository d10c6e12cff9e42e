"""A small Python client of Coffer's gRPC API, as an operator would write one.

The stubs are generated from the project's proto/ with grpcio-tools (`generate`)
and loaded beside the standard googleapis-common-protos package, which owns
google/rpc/*.proto. `Coffer` opens a TLS channel and holds one stub per service;
every call carries the caller's bearer token. `bad_request_fields` decodes the
google.rpc.BadRequest detail of an error with grpcio-status.
"""
import importlib
import os
import sys

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc

SERVICES = {
    "users": ("users", "UserService"),
    "configurations": ("configurations", "ConfigurationService"),
    "grants": ("grants", "GrantService"),
    "buckets": ("buckets", "BucketService"),
    "jobs": ("jobs", "JobService"),
    "runs": ("runs", "RunService"),
    "metadata": ("metadata", "BackupMetadataService"),
    "objects": ("objects", "ObjectService"),
    "tags": ("tags", "TagService"),
    "retention": ("retention", "RetentionService"),
}


def generate(proto_dir, out_dir):
    """Generates the Python messages and stubs of every .proto under proto_dir
    into out_dir and puts out_dir first on the import path."""
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
    sys.path.insert(0, out_dir)
    details = importlib.import_module("google.rpc.error_details_pb2")
    if details.__file__.startswith(out_dir):
        sys.exit("proto/ shadows google/rpc/error_details.proto with its own copy")


def messages(name):
    """The generated module of coffer/v1/<name>.proto."""
    return importlib.import_module(f"coffer.v1.{name}_pb2")


class Coffer:
    """Stubs of every service over one TLS channel, calling as one token."""

    def __init__(self, channel, token):
        self._metadata = [("authorization", f"Bearer {token}")]
        for attribute, (module, service) in SERVICES.items():
            grpc_module = importlib.import_module(f"coffer.v1.{module}_pb2_grpc")
            stub = getattr(grpc_module, f"{service}Stub")(channel)
            setattr(self, attribute, _Authed(stub, self._metadata))

    @staticmethod
    def channel(address, ca_file):
        with open(ca_file, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        return grpc.secure_channel(address, credentials)


class _Authed:
    """A stub whose calls carry the token."""

    def __init__(self, stub, metadata):
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, method):
        call = getattr(self._stub, method)
        return lambda request, **kw: call(request, metadata=self._metadata, timeout=60, **kw)


def bad_request_fields(error):
    """The field paths of the google.rpc.BadRequest detail of a failed call."""
    details = importlib.import_module("google.rpc.error_details_pb2")
    status = rpc_status.from_call(error)
    if status is None:
        return []
    fields = []
    for detail in status.details:
        if detail.Is(details.BadRequest.DESCRIPTOR):
            bad = details.BadRequest()
            detail.Unpack(bad)
            fields.extend(violation.field for violation in bad.field_violations)
    return fields
