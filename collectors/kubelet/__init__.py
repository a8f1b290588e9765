"""The kubelet's pod-resources API: the proto, its generated code and a client.

``api.proto`` is the published v1 API with the gogo options stripped; ``api_pb2.py``,
``api_pb2.pyi`` and ``api_pb2_grpc.py`` are generated from it (see ``README.md`` for the
command) and committed, so installing gpuledger needs no protoc.
"""
