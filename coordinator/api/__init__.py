"""Concord's wire contracts: protobuf sources (`*.proto`) and, generated from them by
`scripts/gen_protos.py` at build time, the `*_pb2` and `*_pb2_grpc` modules (never committed).
"""
