"""Where the mesh model comes from: entry files (and, later, the Kubernetes API)."""
