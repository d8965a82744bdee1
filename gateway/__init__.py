"""The gateway: the public gRPC edge, the prediction store and the event fan-out."""
