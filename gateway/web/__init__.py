"""The web console: the gateway's HTTP port serves it at ``/``, a sibling edge of ``gateway.grpc`` and
``gateway.rest`` over the same core services, never a client of either.

Pages are rendered on the server (``html``: Python strings, every outside value escaped) with one small
script and one style sheet of its own (``static/``: no CDN, no build). A page converts a request into
one call of a core service and the domain objects it returns into HTML, as the other edges do.

- ``context``: ``ConsoleContext`` (the core services), the session (the API token in an HttpOnly,
  SameSite=Strict cookie, checked by ``Accounts.authenticate``), CSRF tokens, errors as pages;
- ``signin``, ``models`` (list, search, a model's page and its Run form), ``predictions`` (list, a
  prediction's page, cancel, output files), ``live`` (a prediction's events as Server-Sent Events);
- ``forms`` (an input schema to form fields and a posted form back to an input), ``widgets`` (the
  fields as HTML), ``snippets`` (the same input as cURL, Python, Node.js and grpcurl);
- ``app.add_console_routes`` puts it all on the gateway's application.
"""
