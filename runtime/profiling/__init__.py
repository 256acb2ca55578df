"""Latency profiling: `ssae bench` (per-stage latency, throughput, memory, backends side by side, regressions)
and `ssae profile` (per-layer time of one graph)."""
