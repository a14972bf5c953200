"""
Per-VIP TCP listeners: what makes an auto-allocated VIP reach the real
service, as Envoy's listeners do in Istio's DNS proxying guide.
"""
