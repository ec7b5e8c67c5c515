"""An oracle module that fails on import with something other than ImportError."""

raise RuntimeError("licence server not reachable")
