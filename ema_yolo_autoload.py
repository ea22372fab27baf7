"""Run `ema_yolo.register()` right after `ultralytics.nn.tasks` (and again after `ultralytics.engine.trainer`) executes,
in any interpreter.

Ultralytics has no plugin hook and builds models by looking names up in that module's globals, so the names must be
there before the first model is parsed: by the stock `yolo` command, the Python API, or a multi-GPU worker that
starts a fresh interpreter. The installed `ema_yolo_autoload.pth` imports this top-level module at every interpreter
start, so it imports nothing (not `ema_yolo`, not `importlib.abc`, whose import chain alone costs ~30 ms): the finder
and loader below follow the `sys.meta_path` protocol (PEP 451) by duck typing. `import ema_yolo` installs it too.
"""

import sys

__all__ = ("install_import_hook",)

TARGETS = ("ultralytics.nn.tasks", "ultralytics.engine.trainer")  # the model parser; the trainer (`freeze`)


def _register_safely():
    """Register, but never let a failure here break `import ultralytics`."""
    try:
        from ema_yolo.integration.ultralytics import register

        register()
    except Exception as e:  # noqa: BLE001 - reported, and the user's Ultralytics keeps working
        import warnings

        warnings.warn(f"ema-yolo could not register its layers with Ultralytics: {e}", stacklevel=2)


class _RegisteringLoader:
    """Wrap the real loader of `ultralytics.nn.tasks` and register once the module has executed."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register_safely()

    def __getattr__(self, name):  # get_source, get_code, ... for tracebacks and inspect
        return getattr(self.loader, name)


class _TasksFinder:
    """Find the `TARGETS` modules with the other finders and hand back their specs with a registering loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None

    def invalidate_caches(self):
        """Nothing cached (`importlib.invalidate_caches` calls this on every finder that has it)."""


def install_import_hook() -> None:
    """Register now if Ultralytics' model parser is loaded, and once each target module that is not loaded yet is
    (idempotent)."""
    if TARGETS[0] in sys.modules:
        _register_safely()
    if not all(t in sys.modules for t in TARGETS) and not any(isinstance(f, _TasksFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TasksFinder())


install_import_hook()
