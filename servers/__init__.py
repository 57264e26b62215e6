"""Servers (installed as ``gar_tools.servers``): the MCP server, the model worker and the CLI commands for both.

- :mod:`gar_tools.servers.mcp_server`: the MCP server (``gar-tools serve``; needs ``gar-tools[mcp]``)
- :mod:`gar_tools.servers.worker_app`: the HTTP worker (``gar-tools worker``; needs ``gar-tools[server]``)
- :mod:`gar_tools.servers.common`: bearer-token middleware, tokens from the environment, server image policy
- :mod:`gar_tools.servers.commands`: the ``serve`` and ``worker`` subcommands (imports the above lazily)
"""
