"""The one image reader of training, evaluation, `effnet prepare` and `effnet predict`.

Which files are images: those whose extension Pillow registers a decoder for (`image_extensions`), less the formats
it can only identify (stub plugins without a handler, MPEG; EPS without Ghostscript). An image folder, its
ArrayRecord shards (which store each file's bytes unchanged) and `predict` all decode through `open_image`:

1. Pillow opens the file (the first frame of an animation) and decodes it now;
2. `ImageOps.exif_transpose` applies the EXIF orientation, so a phone photo stored sideways with an orientation
   tag is read upright, as every viewer shows it;
3. `eight_bit` scales images of more than 8 bits per channel: Pillow's `convert("RGB")` clips instead of scaling, so
   a 16-bit PNG (mode "I;16" or "I", values up to 65535) turned white and a float TIFF (mode "F", values in [0, 1])
   black. 16-bit values are scaled by 255/65535 and float values in [0, 1] by 255 (0.0 black, 1.0 white); a float
   image outside [0, 1] or an integer image outside 16 bits is refused (there is no right scale to guess);
4. `rgb`: conversion to RGB, 8 bits per channel; an image with transparency (RGBA, LA, a palette or greyscale image
   with a transparent colour) is composited onto white, as a viewer shows it on a page: the colour stored under a
   fully transparent pixel is whatever the encoder left there (often black), not part of the picture.
"""

from __future__ import annotations

import collections
import functools
import os
import sys

import numpy as np

__all__ = [
    "describe_files",
    "eight_bit",
    "extension",
    "image_extensions",
    "is_image",
    "is_image_name",
    "open_image",
    "read_image",
    "rgb",
    "tally",
]

# Formats Pillow registers a plugin for that identifies the file but cannot decode its pixels (Pillow's docs,
# "Image file formats": "Pillow identifies MPEG files"; nothing reads them).
_IDENTIFY_ONLY = frozenset({"MPEG"})
# Formats with an extension of their own that Pillow opens through another format's plugin (an MPO is a JPEG with
# more frames; `Image.OPEN` has no "MPO" entry).
_OPENED_AS = {"MPO": "JPEG"}
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@functools.cache
def image_extensions() -> frozenset[str]:
    """The lower-case extensions (".jpg", ".webp", ".tif", ...) of every format this Pillow can decode."""
    from PIL import Image, ImageFile

    Image.init()  # every plugin registered, not only the few Pillow preloads
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        fmt = _OPENED_AS.get(fmt, fmt)
        if fmt not in Image.OPEN or fmt in _IDENTIFY_ONLY:
            continue  # save-only (PDF, Palm) or identify-only
        factory = Image.OPEN[fmt][0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        if stub and getattr(sys.modules.get(factory.__module__), "_handler", None) is None:
            continue  # BUFR, GRIB, HDF5, WMF/EMF decode only through a handler the application registers
        if fmt == "EPS":
            from PIL import EpsImagePlugin

            if not EpsImagePlugin.has_ghostscript():
                continue
        out.add(ext.lower())
    return frozenset(out)


def extension(name: str) -> str:
    """The lower-case extension of a file name, or "(none)"."""
    ext = os.path.splitext(name)[1].lower()
    return ext or "(none)"


def is_image_name(name: str) -> bool:
    """Whether a file name says it is an image this Pillow decodes (hidden files, ".name", are not)."""
    return not os.path.basename(name).startswith(".") and extension(name) in image_extensions()


def tally(counts: collections.Counter, *, most: int = 6) -> str:
    """`Counter({".jpg": 120, ".webp": 3})` as "120 .jpg, 3 .webp" (the `most` commonest, then "and N more")."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{n} {ext}" for ext, n in items[:most])
    if len(items) > most:
        text += f" and {sum(n for _, n in items[most:])} more"
    return text


def describe_files(used, not_used) -> str:
    """The data line's account of a folder, by extension: "120 .jpg, 3 .webp; not used: 2 .txt, 1 hidden"."""
    text = tally(collections.Counter(used))
    return text + (f"; not used: {tally(collections.Counter(not_used))}" if not_used else "")


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


def rgb(image):
    """A PIL image of 8 bits per channel as RGB; transparent parts composited onto white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA or "transparency" in image.info:  # a P/L/RGB image with a transparent colour
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def is_image(file) -> bool:
    """Whether a decoder recognises the header of `file` (a path or a binary file object); cheap: no pixels
    decoded. `effnet prepare` uses it to name files that training will skip."""
    from PIL import Image

    try:
        with Image.open(file):
            return True
    except Exception:  # noqa: BLE001 - Pillow raises many types; each means "not an image it reads"
        return False


def open_image(file, name: str | None = None):
    """An image file (a path or a binary file object) decoded, upright (EXIF orientation applied), 8 bits per
    channel, RGB: a loaded PIL image, its file closed.

    Raises:
      FileNotFoundError / OSError: the path cannot be opened (missing, a directory, no permission).
      ValueError: the path is a pipe or a device, or the bytes are not an image Pillow decodes, are truncated, trip
        Pillow's decompression-bomb guard, or hold values with no 8-bit scale; the message starts with `name`
        (default: the path).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = isinstance(file, (str, os.PathLike))
    if name is None:
        name = os.fspath(file) if path else "image"
    if path:  # before it is opened: a named pipe would block, /dev/zero never end
        from effnet_spec.paths import not_a_file

        problem = not_a_file(file)
        if problem and problem.startswith("not a regular file"):  # missing, a directory: open()'s OSError below
            raise ValueError(f"{name}: {problem}; expected an image file")
    f = open(file, "rb") if path else file  # noqa: SIM115 - closed below; an OSError here is about the path
    try:
        with Image.open(f) as im:
            ImageOps.exif_transpose(im, in_place=True)  # decodes now; no copy when upright already
            out = rgb(eight_bit(im))
            return out.copy() if out is im else out  # `im` is closed on leaving the block
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image Pillow can read") from None
    except Image.DecompressionBombError as e:  # Pillow's guard against huge images (a DoS), not an OSError
        raise ValueError(f"{name}: refused by Pillow's decompression-bomb guard ({e})") from None
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    except (OSError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError) as e:
        # a truncated or damaged file: Pillow's parsers raise any of these for bytes they cannot follow
        raise ValueError(f"{name}: cannot read the image ({e})") from None
    finally:
        if path:
            f.close()


def read_image(file, name: str | None = None) -> np.ndarray:
    """`open_image` as a uint8 array (H, W, 3)."""
    return np.asarray(open_image(file, name))
