#!/usr/bin/env python3
"""An independent gRPC client for the Convoy hub, built only from server reflection.

It uses Python grpcio and grpcio-reflection (no generated code, no Convoy
.proto file): it lists the services through reflection, builds message classes
from the descriptors the hub serves, then calls grpc.health.v1 Health/Check and
convoy.v1 Fleet/ListClusters over mTLS with an admin certificate, and checks
that Fleet refuses a caller without credentials.

Usage: hub_client.py --address HOST:PORT --ca CA.pem --cert ADMIN.crt --key ADMIN.key
Prints one JSON object; exits non-zero on any failure.
"""

import argparse
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def unary(channel, pool, method, request_type, response_type):
    req_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(request_type))
    resp_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(response_type))
    call = channel.unary_unary(
        method,
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    return req_cls, call


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--server-name", default="localhost")
    args = ap.parse_args()

    ca = open(args.ca, "rb").read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=open(args.key, "rb").read(),
        certificate_chain=open(args.cert, "rb").read(),
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    out = {}
    with grpc.secure_channel(args.address, creds, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        out["services"] = services
        for want in ("convoy.v1.Fleet", "convoy.v1.Agent", "convoy.v1.Registration", "grpc.health.v1.Health"):
            if want not in services:
                raise SystemExit(f"reflection does not list {want}: {services}")
        pool = DescriptorPool(db)

        req, check = unary(
            channel, pool, "/grpc.health.v1.Health/Check",
            "grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse",
        )
        health = check(req(service=""), timeout=10)
        out["health"] = json_format.MessageToDict(health)
        health_fleet = check(req(service="convoy.v1.Fleet"), timeout=10)
        out["health_fleet"] = json_format.MessageToDict(health_fleet)

        req, list_clusters = unary(
            channel, pool, "/convoy.v1.Fleet/ListClusters",
            "convoy.v1.ListClustersRequest", "convoy.v1.ListClustersResponse",
        )
        resp = list_clusters(req(label_selector=""), timeout=10)
        out["clusters"] = json_format.MessageToDict(resp).get("clusters", [])

    # Without a client certificate, fleet calls are refused.
    with grpc.secure_channel(args.address, grpc.ssl_channel_credentials(root_certificates=ca), options=options) as anon:
        call = anon.unary_unary(
            "/convoy.v1.Fleet/ListClusters",
            request_serializer=lambda m: b"",
            response_deserializer=lambda b: b,
        )
        try:
            call(None, timeout=10)
            raise SystemExit("an anonymous fleet call was accepted")
        except grpc.RpcError as e:
            out["anonymous"] = e.code().name

    json.dump(out, sys.stdout, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
