"""The scheduler: the controller (control plane, a Ray actor) and the router (in the gateway process)."""
