"""Protobuf package `infermesh`."""
