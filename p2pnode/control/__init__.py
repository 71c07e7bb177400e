"""The local control API: how `p2pnode peers|market|status` talk to a running node.

Transport: a Unix stream socket at ``<data-dir>/control.sock``, mode 0600 inside a 0700 data dir,
and the server also checks the caller's uid (``SO_PEERCRED``): no other local user can drive the
node. Protocol: one JSON object per line. Request ``{"cmd": NAME}``; reply
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. Requests are capped at 64 KiB;
every number in one must be finite and in its field's range (:mod:`p2pnode.control.requests`), or
the request is refused with an error naming the field.
"""
