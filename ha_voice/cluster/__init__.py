"""The cluster: election core (pure) and, in later modules, the I/O shell around it."""
