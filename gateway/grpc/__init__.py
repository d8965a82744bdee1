"""The gateway's gRPC edge over the core services in ``gateway/``: the warmfleet.v1 servicers
(``servicers``), the one interceptor that authenticates callers and maps domain errors to gRPC statuses
(``interceptors``), and the conversions between protobuf messages and domain types (``convert``). Each
method converts, calls one core service, and converts back; ``gateway.server`` builds and serves them."""
