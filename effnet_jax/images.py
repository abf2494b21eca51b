"""Image files with more than 8 bits per channel, brought to the 8-bit range training and `predict` use.

Pillow's `convert("RGB")` clips instead of scaling: a 16-bit PNG (mode "I;16" or "I", values up to 65535) turns
white and a float TIFF (mode "F", values in [0, 1]) turns black. Here 16-bit values are scaled by 255/65535 and
float values in [0, 1] by 255; a float image outside [0, 1] or an integer image outside 16 bits is refused
(there is no right scale to guess).
"""

from __future__ import annotations

import numpy as np

__all__ = ["eight_bit"]


def eight_bit(image):
    """`image` (PIL) as an 8-bit greyscale image when its mode holds more than 8 bits; other modes unchanged.

    Raises:
      ValueError: a float image with values outside [0, 1] (or not finite), or an integer one outside [0, 65535].
    """
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(image).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"a {mode} image with values in [{a.min():g}, {a.max():g}]; expected 16-bit [0, 65535]")
        a = a * (255.0 / 65535.0)
    elif mode == "F":
        a = np.asarray(image).astype(np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(f"a float image with values in [{np.nanmin(a):g}, {np.nanmax(a):g}]; expected [0, 1]")
        a = a * 255.0
    else:
        return image
    return Image.fromarray(np.round(a).astype(np.uint8), mode="L")
