"""A deterministic virtual-time simulation of the election core on a hostile network.

Used by the tests (tests/sim), the benchmarks (tests/bench) and `ha-voice simulate`, with which
an operator can try timers against loss, partitions and crashes before deploying them.
"""
