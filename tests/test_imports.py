"""Imports cost what they use: a front-end that holds no model (adapters, servers with an http engine, the CLI's
help) never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from server_helpers import REPO

HEAVY = ("torch", "transformers")
CHECK = "import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"


@pytest.mark.parametrize(
    "code",
    [
        "import gar_tools",
        "import gar_tools.engine.http",
        "import gar_tools.servers.mcp_server",
        "import gar_tools.servers.worker_app",
        "import gar_tools.adapters.langchain",
        "import gar_tools.adapters.llama_index",
        "import gar_tools.toolkit, gar_tools.tools",
        "from gar_tools.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from gar_tools.cli import main\ntry:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["gar_tools", "http", "mcp_server", "worker_app", "langchain", "llama_index", "toolkit", "help", "serve-help"],
)
def test_light_imports_leave_torch_out(code: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{CHECK.format(heavy=HEAVY)}"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.anyio
async def test_serve_with_http_engine_answers_initialize_without_torch(tmp_path) -> None:
    """With torch and transformers made unimportable, ``serve --engine http://…`` still lists the tools."""
    pytest.importorskip("mcp")
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from gar_tools.tools import tool_names

    launcher = (
        "import sys\n"
        "for name in ('torch', 'transformers'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "from gar_tools.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    args = ["-c", launcher, "serve", "--transport", "stdio", "--engine", "http://127.0.0.1:9"]
    params = StdioServerParameters(command=sys.executable, args=args, cwd=str(REPO))
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            listed = [tool.name for tool in (await client.list_tools()).tools]
    assert listed == list(tool_names())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_model_imports_nothing_from_the_tool_layer() -> None:
    """``gar_tools.model`` is below the tools: it may use only itself, the errors and the kernels."""
    allowed = ("gar_tools.model", "gar_tools.errors", "gar_tools.kernels", "gar_tools._lazy")
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in (REPO / "gar_tools" / "model").glob("*.py")
        for line in path.read_text().splitlines()
        if line.strip().startswith(("from gar_tools", "import gar_tools")) and not line.split()[1].startswith(allowed)
    ]
    assert offenders == []


def test_the_repository_root_shadows_no_installed_package() -> None:
    """Run from a checkout (``python -m pytest``, ``python -m gar_tools``), the repository root is first on
    ``sys.path``: a package folder there would hide an installed one of the same name. A top-level ``kernels/`` once
    hid Hugging Face's ``kernels``, which transformers 5.25 depends on and imports from its model code."""
    packages = sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() or p.suffix == ".py")
    assert packages == ["gar_tools"]
    code = "import transformers.integrations.hub_kernels, gar_tools.kernels.roi_replay; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
