"""Generated modules of the `infermesh.v1` protobuf package (regenerate with `python -m agents.proto.build`)."""
