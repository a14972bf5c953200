"""
Operations around the DNS path: the reload watcher, the admin endpoint and
its metrics, the query log, DNS capture, and the VIP listeners.
"""
