"""A small local Kubernetes API server for tests: list, watch and GET, with faults."""

from tests.fakekube.server import FakeKube

__all__ = ["FakeKube"]
