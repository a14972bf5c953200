"""
Where documents come from: the Kubernetes API (list and watch).
"""
