"""``diffusio serve``: a local web studio over the library's front doors (sampling with live x0 previews and
cancel, guidance, inpainting, a gallery of PNGs that carry their parameters, seed x steps comparisons)."""

from diffusio.app.ui.jobs import BadRequest, Cancelled, Studio, read_png_params
from diffusio.app.ui.server import create_app, serve

__all__ = ["BadRequest", "Cancelled", "Studio", "create_app", "read_png_params", "serve"]
