"""The robot channel: backends (the Go2, the simulator) and the single gate to them."""
