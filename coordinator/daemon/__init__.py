"""`concord-coordinator`, the member process: the composition root above the server.

It reads the command line, opens the data directory, builds the Raft loop (`runtime`) and the
gRPC services (`server`) over it, serves the probes, joins a running cluster when told to and
keeps the transport's peers equal to the configuration. Nothing imports it: it is a process
(`python -m coordinator.daemon.member`, or the `concord-coordinator` script).
"""
