"""The web dashboard: watch and steer experiments from one page (``rf-ray dashboard``).

Modules: ``command`` (the CLI command), ``app`` (the Starlette app and its JSON API),
``reads`` (the read side: the experiment's store, opened read-only), ``steer`` (ops through
``rf_ray.ops``, like ``rf-ray ops``), ``guard`` (host, access token and CSRF checks), and
``static/`` (the page, its script and style; charts are inline SVG, no network needed).
See docs/dashboard.md.
"""
