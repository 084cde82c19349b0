"""HTTP: a sans-I/O relay (h11) and the sidecar proxy that observes (and may guard) a service."""
