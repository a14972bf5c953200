"""
The DNS path: the client query read at the wire level, the fast path, the
caching forwarder and its upstream client, and the server protocols.
"""
