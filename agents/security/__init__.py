"""Mesh identity: the certificate authority, SPIFFE X.509 SVIDs, enrollment and rotation, mTLS and authorization
for the agents' gRPC servers."""
