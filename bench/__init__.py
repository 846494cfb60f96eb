"""Benchmarks of Concord side by side with etcd and PySyncObj (issue 5); not part of the
product and not shipped in the wheel.

Modules: `procs` (child processes that cannot outlive the run, /proc readings), `load` (the
one load generator and its latency histogram), `figures` (what is measured, the targets),
`systems/` (a launcher and a client session per system: `concord`, `etcd`, `pysyncobj` and
the PySyncObj node program), `run` (the figures against one system), `profile` (py-spy on
Concord's leader), `report` (table, ratios, targets, plots, docs/benchmarks.md),
`runs_report` (several runs: each one's ratios, their spread, targets met in k of N),
`scale` with `leases` and `locks` (`make bench-scale`), `scale_report` (those runs summed up
for docs/benchmarks.md) and `protos` (the etcd wire declarations and the PySyncObj front,
generated at build time).

Run it with `make bench` (or `python -m bench run --quick` for a smoke run) and
`make bench-report`; see docs/benchmarks.md.
"""
