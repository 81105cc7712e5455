"""A shop that enqueues Django tasks; asyncbridge runs them in the web worker."""
