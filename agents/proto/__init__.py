"""Wire schemas of the mesh: protobuf sources under `infermesh/v1` and the modules generated from them."""
