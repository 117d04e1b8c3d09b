"""The layering docs/extending.md promises: the core (metarl/ outside agents/ and envs/) resolves agents
and envs through the registry when a name is used, never at import time."""
import subprocess
import sys
import textwrap


def test_core_modules_import_no_agent_or_env():
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import metarl
        core = [m.name for m in pkgutil.walk_packages(metarl.__path__, "metarl.")
                if not m.name.startswith(("metarl.agents", "metarl.envs"))]
        for name in core:
            importlib.import_module(name)
        print(len(core))
        print(" ".join(m for m in sys.modules if m.startswith(("metarl.agents", "metarl.envs"))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    count, loaded = out.split("\n")[:2]
    assert int(count) > 30  # the walk found the core's modules
    assert loaded == "", f"core modules import at import time: {loaded}"
