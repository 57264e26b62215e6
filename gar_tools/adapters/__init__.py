"""Framework adapters for the three GAR tools, each behind its extra.

- :mod:`gar_tools.adapters.langchain`: :class:`GarLangChainToolkit` (``pip install 'gar-tools[langchain]'``)
- :mod:`gar_tools.adapters.llama_index`: :class:`GarToolSpec` (``pip install 'gar-tools[llama-index]'``)
- :mod:`gar_tools.adapters.common`: the tool descriptions, result text and usage guide they (and the MCP server)
  share; no extra needed.

The adapter classes are imported lazily, so importing this package needs neither framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gar_tools._lazy import lazy_getattr

if TYPE_CHECKING:
    from gar_tools.adapters.langchain import GarLangChainToolkit
    from gar_tools.adapters.llama_index import GarToolSpec

__all__ = ["GarLangChainToolkit", "GarToolSpec"]

_LAZY = {
    "GarLangChainToolkit": "gar_tools.adapters.langchain",
    "GarToolSpec": "gar_tools.adapters.llama_index",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
