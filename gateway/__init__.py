"""The gateway: its core services directly in this package (predictions, the catalog, deployments,
pushes, files, the prediction store and the event fan-out), and the edges over them as siblings:
``grpc`` (warmfleet.v1) and ``rest`` (the same services as JSON over HTTP). ``server`` builds and
starts everything."""
