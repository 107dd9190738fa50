"""lazypull's lazy-start benchmark (HelloBench-style): ``make bench`` runs ``bench/run.py``.

Modules: ``delayproxy`` (latency), ``netshape`` (bandwidth with tc in a private netns),
``registry`` (Debian's docker-registry in that netns, access log), ``containerd`` (the baseline),
``images`` (Debian-built two-layer images and their variants), ``workloads``, ``sample`` (one cold
sample), ``ideal`` (T_ideal), ``summary`` (docs/benchmarks.md tables and the PNG), ``run`` (the CLI).
"""
