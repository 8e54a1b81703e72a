"""octseg: semi-supervised segmentation of fluid in retinal OCT B-scans."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("octseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__", "Predictor"]


def __getattr__(name):
    # Lazy so that `import octseg` stays cheap (no torch import) for the data tools.
    if name == "Predictor":
        from octseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(name)
