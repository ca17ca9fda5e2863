"""The gRPC server and the CLI (import package `assigncore_server`)."""

import os

# The server forks children (the snapshotter) while gRPC threads run, and never uses
# gRPC across a fork. gRPC's fork handlers in such a child can crash it before it execs,
# so they are off unless the operator asks for them. Set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
