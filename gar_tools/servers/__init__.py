"""Servers (installed as ``gar_tools.servers``): the MCP server and the model worker.

- :mod:`gar_tools.servers.mcp_server`: the MCP server (``gar-tools serve``; needs ``gar-tools[mcp]``)
- :mod:`gar_tools.servers.worker_app`: the HTTP worker (``gar-tools worker``; needs ``gar-tools[server]``)
- :mod:`gar_tools.servers.settings`: their settings, image policy and tokens (no server framework needed)
- :mod:`gar_tools.servers.common`: bearer-token, Host/Origin and request-limit middleware, the loopback check,
  running an ASGI app with a request-head timeout and a 'listening on' line
- :mod:`gar_tools.servers.ui`: the region picker page (``GET /ui`` on both HTTP servers) and its MCP App resource

The CLI (:mod:`gar_tools.cli`) parses arguments into settings and calls ``run_server`` / ``run_worker``.
"""
