"""MQTT: a sans-I/O codec, and the proxy that observes (and may guard) a broker."""
