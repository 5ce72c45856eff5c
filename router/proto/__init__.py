"""KServe v2 / Open Inference Protocol gRPC schema (`inference.GRPCInferenceService`) and its generated modules."""
