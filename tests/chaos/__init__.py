"""The chaos suite: real `ha-voice run` processes in network namespaces under a seeded nemesis.

Built on tests/jepsen.py (workload, history, exactly-once checker) and tests/integration/netns.py
(namespaces on a bridge). One run (`run.run_chaos`, inside the client's namespace):

- a topology (`topology.TOPOLOGIES`: three nodes; two nodes and a witness; `two_node`), each
  member in its own namespace with a private address, real multicast (mDNS on) and a floating IP,
  the sim robot (`ha-voice sim-robot`) in one more namespace and the client in another;
- the jepsen workload through `ha_voice.client` (every node's address and the floating IP);
- `nemesis.ChaosNemesis`: the jepsen process faults plus nftables partitions, one-way cuts, a
  cut from the robot, random loss and duplication, fsfreeze and a CPU hog, in a seeded schedule;
- `observe.Monitor` (each node's /cluster/primary: role and term, every 100 ms) and
  `observe.ClientView` (a passive zeroconf `ServiceBrowser` and an ARP probe of the floating IP,
  both from the client's namespace);
- `checker.check_chaos`: terms monotonic per node, a primary back within a bound after each fault
  heals, and the client's view (mDNS and ARP) on the current primary within the bound — next to
  `tests.jepsen.check`'s rules.

A run that breaks a rule prints how to replay it (`run.ChaosRun.replay`): the seed, the topology,
the faults with times from the start, and the command line (`python -m tests.chaos ...`).
`lan.run_outside` makes the namespaces and runs a whole run from the host's namespace: the e2e
test (tests/e2e/test_chaos.py), the benchmark (tests/bench/bench_chaos.py) and the CLI use it.
"""
