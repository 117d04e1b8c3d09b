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


def test_a_broken_registry_entry_is_one_line_but_a_missing_dependency_stays_an_import_error(
        cli, monkeypatch, tmp_path):
    import pytest

    from metarl.errors import UserError
    from metarl.registry import AGENTS, Entry, load, names_where
    monkeypatch.setitem(AGENTS, "typo", Entry("metarl.agents.no_such_module:Thing", "a mistyped target"))
    code, _, err = cli("train", "typo", "--env", "bandit")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "metarl.agents.no_such_module" in err
    with pytest.raises(UserError, match="has no 'Nope'"):
        load("metarl.agents.rl2:Nope")
    with pytest.raises(UserError):  # listing alternatives does not hide a broken entry
        names_where(AGENTS, lambda a: True)
    # a module whose import needs a package that is not installed: an ImportError, which
    # names_where reads as an optional dependency missing
    (tmp_path / "needs_optional.py").write_text("import no_such_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        load("needs_optional:Thing")
    monkeypatch.setitem(AGENTS, "typo", Entry("needs_optional:Thing", "needs a package not installed"))
    assert "typo" not in names_where(AGENTS, lambda a: True)
