# The entry module Karta generates around an app's stdio MCP server script
# (host/src/plugin/python_mcp/compile.rs fills in the three constants).
#
# componentize-py imports this module at build time and snapshots the
# interpreter (pre-initialization), so everything done at import time is paid
# once, at compile, never per call:
#   - the script is compiled to a code object (its source is embedded here, so
#     the component needs no file of the app at run time but its data);
#   - every module the script imports is imported now, so a
#     missing one (a native or third-party dependency) fails the build with a
#     clear message instead of failing each call, and the imports cost nothing
#     per call.
# At run time `run()` executes the script as `__main__` in the preopened app
# folder, like `python3 tools/x.py` started in the app's folder.
import ast
import importlib
import os
import sys

from wit_world import exports

_SCRIPT_PATH = __KARTA_SCRIPT_PATH__
_SCRIPT_ARGS = __KARTA_SCRIPT_ARGS__
_SCRIPT_SOURCE = __KARTA_SCRIPT_SOURCE__
_GUEST_CWD = "/app"


def _imports(tree):
    """(module, guarded) for every import in the script, also those inside
    functions (they run later, per call, and must be bundled too); guarded
    means inside a `try` (`try: import ujson / except ImportError: ...`), whose
    failure the script expects."""
    found = []

    def visit(node, guarded):
        if isinstance(node, ast.Import):
            found.extend((alias.name, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, guarded))
        inner = guarded or isinstance(node, ast.Try) or type(node).__name__ == "TryStar"
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


_TREE = ast.parse(_SCRIPT_SOURCE, _SCRIPT_PATH)
_CODE = compile(_TREE, _SCRIPT_PATH, "exec")
for _name, _guarded in _imports(_TREE):
    try:
        importlib.import_module(_name)
    except ImportError as _e:
        if _guarded:
            continue
        # Marked so the host can find this line in componentize-py's output.
        raise ImportError(
            "KARTA_MISSING_MODULE: %s imports `%s`, which is neither in the Python "
            "standard library bundled into the component nor a .py file beside "
            "the script (native or third-party dependencies cannot be compiled): %s"
            % (_SCRIPT_PATH, _name, _e)
        ) from None


class Run(exports.Run):
    def run(self):
        os.chdir(_GUEST_CWD)
        sys.argv = [_SCRIPT_PATH] + list(_SCRIPT_ARGS)
        scope = {"__name__": "__main__", "__file__": _SCRIPT_PATH, "__builtins__": __builtins__}
        try:
            exec(_CODE, scope)
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
        finally:
            sys.stdout.flush()
