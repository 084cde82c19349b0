"""commgraph: learns who talks to whom between IoT microservices and flags what is new."""

from __future__ import annotations

__version__ = "0.1.0"
