"""The node's web pages: the dashboard (:mod:`.dashboard`) and the swarm view (:mod:`.swarm_view`).

Both are Starlette apps served by Hypercorn on the caller's trio loop (:mod:`.server`), behind one
guard (:mod:`.guard`: a token for every request, POST with the token in a header for changes, the
``Host`` checked). Their pages are plain HTML, CSS and JavaScript in ``static/``, with one vendored
chart library (``static/vendor/``); nothing is fetched from elsewhere. Depends on the control views
(what the pages show) and nothing of the node beyond them.
"""
