"""The live-analytics demo: a Flask app under gunicorn pushes page hits to a local push hub.

Run it with ``./scripts/demo`` (or ``python -m demo.run --help``). The pieces:

- :mod:`demo.app`: the Flask app; ``/track`` records a hit and pushes it in the current mode.
- :mod:`demo.push`: the push itself, handed to asyncbridge or sent inline with a blocking client.
- :mod:`demo.mode`: the push mode, shared by every worker through a file the hub writes.
- :mod:`demo.metrics`: times the app's requests and reports them to the hub for the graph.
- :mod:`demo.hub`: an aiohttp stand-in for a hosted push service, with the dashboard.
- :mod:`demo.signing`: the shared-secret signature both sides use.
- :mod:`demo.traffic`: a traffic generator.
- :mod:`demo.run`: starts the hub and gunicorn on 127.0.0.1 and stops them cleanly.
"""
